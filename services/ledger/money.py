"""Currencies the ledger accepts, their reference FX rates, and amount parsing."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal

# Minor units per ISO 4217.
MINOR_UNITS: dict[str, int] = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0}

# Reference rates into USD, published daily by treasury; fixed for the lab.
FX_RATES_TO_USD: dict[str, str] = {
    "USD": "1",
    "EUR": "1.0837",
    "GBP": "1.2674",
    "CHF": "1.1298",
    "JPY": "0.006712",
}

# Larger than any single payment the business takes; keeps sums far from overflow.
MAX_AMOUNT = Decimal("1000000000")

_PLAIN_DECIMAL = re.compile(r"[0-9]{1,13}(\.[0-9]{1,8})?")


class AmountError(ValueError):
    pass


def parse_amount(raw: str, currency: str) -> Decimal:
    """A positive amount with no more decimals than the currency has."""
    if not _PLAIN_DECIMAL.fullmatch(raw):
        raise AmountError(f'amount must be a plain decimal string such as "12.34", got {raw!r}')
    amount = Decimal(raw)
    places = MINOR_UNITS[currency]
    if -amount.as_tuple().exponent > places:  # type: ignore[operator]
        raise AmountError(f"{currency} amounts have at most {places} decimal places, got {raw!r}")
    if amount <= 0:
        raise AmountError("amount must be greater than zero")
    if amount > MAX_AMOUNT:
        raise AmountError(f"amount must not exceed {MAX_AMOUNT}")
    return amount


def exact_booked_amount(received: str, fx_rate: str, currency: str) -> Decimal:
    """Treasury's rule: amount times rate, rounded half-even to the booked currency's minor unit."""
    quantum = Decimal(1).scaleb(-MINOR_UNITS[currency])
    return (Decimal(received) * Decimal(fx_rate)).quantize(quantum, rounding=ROUND_HALF_EVEN)
