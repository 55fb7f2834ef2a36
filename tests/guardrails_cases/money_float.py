"""Cases for guardrails/semgrep/money-float.yml."""

from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import Column, Float, Integer, Numeric
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # ruleid: money-float-column
    amount: Mapped[float] = mapped_column(Float)
    # ruleid: money-float-column
    balance_after = mapped_column(Float(precision=53))
    # ruleid: money-float-column
    fee_total = Column(Float)
    # ruleid: money-float-column
    price: Mapped[float]
    # ok: money-float-column
    amount_minor: Mapped[int] = mapped_column(Integer)
    # ok: money-float-column
    exact_amount: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    # ok: money-float-column
    latency_s: Mapped[float] = mapped_column(Float)


class Quote(BaseModel):
    # ruleid: money-float-column
    total: float
    # ok: money-float-column
    weight_kg: float


def convert(body: Quote, fx_rate: str, delay: str) -> None:
    # ruleid: money-float-arithmetic
    amount = float(body.total)
    # ruleid: money-float-arithmetic
    amount = amount * float(fx_rate)
    # ok: money-float-arithmetic
    seconds = float(delay)
    # ok: money-float-arithmetic
    exact = Decimal(body.total) * Decimal(fx_rate)
    print(amount, seconds, exact)  # noqa: T201
