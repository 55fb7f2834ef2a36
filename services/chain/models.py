"""Chain API schemas: orders (A), quotes (B), reservations (C), customer checks (A)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
SKU_PATTERN = r"^[A-Z0-9][A-Z0-9-]{1,31}$"

# The catalogue B prices from, in cents; a real pricing service would read it from a table.
PRICE_LIST_CENTS = {
    "TEA-EARL-GREY": 650,
    "TEA-SENCHA": 820,
    "MUG-STONEWARE": 1450,
    "KETTLE-STEEL": 3990,
    "INFUSER-MESH": 390,
}
# Each product's VAT class; the rate of a class comes from the regional tax store (tax.py).
TAX_CLASS = {
    "TEA-EARL-GREY": "reduced",
    "TEA-SENCHA": "reduced",
    "MUG-STONEWARE": "standard",
    "KETTLE-STEEL": "standard",
    "INFUSER-MESH": "standard",
}

CATALOGUE: list[JsonValue] = [*sorted(PRICE_LIST_CENTS)]


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The schema lists the catalogue: an order for anything else is refused (422 from orders).
    sku: str = Field(pattern=SKU_PATTERN, json_schema_extra={"enum": CATALOGUE})
    quantity: int = Field(ge=1, le=100)


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=ID_PATTERN)
    lines: list[Line] = Field(min_length=1, max_length=20)


class QuoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(pattern=ID_PATTERN)
    customer_id: str = Field(pattern=ID_PATTERN)
    lines: list[Line] = Field(min_length=1, max_length=20)


class ReservationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(pattern=ID_PATTERN)
    customer_id: str = Field(pattern=ID_PATTERN)
    lines: list[Line] = Field(min_length=1, max_length=20)


class CustomerCheckPublic(BaseModel):
    customer_id: str
    approved: bool


class ReservationPublic(BaseModel):
    reservation_id: str
    order_id: str
    status: Literal["held", "pending"]
    units: int


class ReservationsPublic(BaseModel):
    data: list[ReservationPublic]


class QuotePublic(BaseModel):
    order_id: str
    net: Decimal
    tax: Decimal
    total: Decimal
    currency: str
    reservation: ReservationPublic


class OrderPublic(BaseModel):
    order_id: str
    customer_id: str
    status: Literal["confirmed", "pending"]
    total: Decimal | None
    tax: Decimal | None
    currency: str
    reservation_id: str | None
