"""Ledger tables and API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import DateTime, Float, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit.models import UtcDateTime
from services.ledger.money import MINOR_UNITS, parse_amount


class Base(DeclarativeBase):
    pass


class Transaction(Base):
    """One posting. amount is in the booked currency; the *_received columns are the audit trail."""

    __tablename__ = "ledger_transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    direction: Mapped[str] = mapped_column(String(6))
    amount: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    balance_after: Mapped[float] = mapped_column(Float)
    amount_received: Mapped[str] = mapped_column(String(32))
    currency_received: Mapped[str] = mapped_column(String(3))
    fx_rate: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    @property
    def signed_amount(self) -> float:
        return self.amount if self.direction == "credit" else -self.amount


Currency = Literal["USD", "EUR", "GBP", "CHF", "JPY"]
ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
# What parse_amount accepts, as far as a pattern can say it: a plain decimal above zero and
# below MAX_AMOUNT with at most two decimals; JPY_AMOUNT_PATTERN has none.
AMOUNT_PATTERN = r"^([1-9][0-9]{0,8}(\.[0-9]{1,2})?|0\.([1-9][0-9]?|0[1-9]))$"
JPY_AMOUNT_PATTERN = r"^[1-9][0-9]{0,8}$"
# Posting ids are 32-bit integers in the database: a cursor past them matches nothing.
MAX_POSTING_ID = 2**31 - 1


class TransactionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"currency": {"const": "JPY"}}},
            "then": {"properties": {"amount": {"pattern": JPY_AMOUNT_PATTERN}}},
        },
    )

    account_id: str = Field(pattern=ACCOUNT_ID_PATTERN)
    direction: Literal["credit", "debit"]
    currency: Currency
    # The pattern is documentation; _amount_fits_currency enforces it with a clearer message.
    amount: str = Field(
        max_length=32,
        json_schema_extra={"pattern": AMOUNT_PATTERN},
        description='A plain decimal string, e.g. "12.34": above 0, at most 1000000000, with no '
        "more decimals than the currency's minor units (2; JPY 0)",
    )
    description: str | None = Field(None, max_length=200)

    @field_validator("amount")
    @classmethod
    def _amount_fits_currency(cls, value: str, info: ValidationInfo) -> str:
        currency = info.data.get("currency")
        if currency is not None:  # an unknown currency is reported on its own field
            parse_amount(value, currency)
        return value


def format_amount(value: float, currency: str) -> str:
    return f"{value:.{MINOR_UNITS[currency]}f}"


class TransactionPublic(BaseModel):
    id: int
    account_id: str
    direction: str
    amount: str
    currency: str
    balance_after: str
    amount_received: str
    currency_received: str
    fx_rate: str
    idempotency_key: str | None
    created_at: UtcDateTime | None

    @classmethod
    def of(cls, tx: Transaction) -> TransactionPublic:
        return cls(
            id=tx.id,
            account_id=tx.account_id,
            direction=tx.direction,
            amount=format_amount(tx.amount, tx.currency),
            currency=tx.currency,
            balance_after=format_amount(tx.balance_after, tx.currency),
            amount_received=tx.amount_received,
            currency_received=tx.currency_received,
            fx_rate=tx.fx_rate,
            idempotency_key=tx.idempotency_key,
            created_at=tx.created_at,
        )


class TransactionsPublic(BaseModel):
    data: list[TransactionPublic]
    next_after: int | None


class BalancePublic(BaseModel):
    currency: str
    amount: str


class BalancesPublic(BaseModel):
    account_id: str
    balances: list[BalancePublic]


class AccountReconciliation(BaseModel):
    account_id: str
    currency: str
    balance: str
    recount: str
    difference: str


class ReconciliationPublic(BaseModel):
    postings: int
    duplicate_postings: int
    keys_reused: int
    accounts: list[AccountReconciliation]
