"""fp-drift's judge: the ledger's balances and postings against what the clients sent."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx

from drill.collectors.truth import read_truth
from drill.native import LabConfig

# The provider's published rule for how profiles change: the judge recomputes it.

# ISO 4217 minor units of the currencies the payment client sends. Kept apart from the
# ledger's own table on purpose: the checker must not move when a participant edits the service.
MINOR_UNITS = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0}
# Treasury's published reference rates into USD, fixed for the lab; apart from the ledger's copy
# (services/ledger/money.py) for the same reason: a ledger that books at another rate is wrong.
REFERENCE_RATES_TO_USD = {
    "EUR": Decimal("1.0837"),
    "GBP": Decimal("1.2674"),
    "CHF": Decimal("1.1298"),
    "JPY": Decimal("0.006712"),
}
BASE_CURRENCY = "USD"
FX_FLAG = "ledger.fx_conversion"


def _decimal_json(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def conversion_rule(flags_path: Path) -> Callable[[str], bool]:
    """Whether the run's flags had the ledger convert an account's payments into USD.

    The ledger evaluates the flag per payment with the account as targeting key, so a share
    (flagd's fractional) is decided here by flagd's own targeting rules on the same key.
    """
    document = json.loads(flags_path.read_text()) if flags_path.exists() else {"flags": {}}
    definition = document["flags"].get(FX_FLAG)
    if not definition or definition.get("state", "ENABLED") != "ENABLED":
        return lambda account: False
    variants: dict[str, Any] = definition.get("variants", {})
    default = str(definition.get("defaultVariant"))
    rule = definition.get("targeting")
    if not rule:
        everyone = bool(variants.get(default, False))
        return lambda account: everyone

    # The same evaluator as the ledger's flagd provider; imported here, as drill's CLI does.
    from openfeature.contrib.tools.flagd.core.targeting import targeting
    from openfeature.evaluation_context import EvaluationContext

    def converts(account: str) -> bool:
        variant = targeting(FX_FLAG, rule, EvaluationContext(targeting_key=account))
        return bool(variants.get(str(variant) if variant is not None else default, False))

    return converts


@dataclass(frozen=True)
class Booking:
    """The posting a payment must make: its account, direction, currency and amount."""

    account_id: str
    direction: str
    currency: str
    amount: Decimal  # unsigned, at the booked currency's minor unit

    @property
    def signed(self) -> Decimal:
        return self.amount if self.direction == "credit" else -self.amount


def expected_booking(record: dict[str, Any], convert: bool) -> Booking:
    """What a payment the client sent must book: with conversion on, a non-USD payment is
    booked in USD at the reference rate; amounts round half-even to the booked minor unit."""
    currency, rate = record["currency"], Decimal(1)
    if convert and currency != BASE_CURRENCY:
        currency, rate = BASE_CURRENCY, REFERENCE_RATES_TO_USD[currency]
    quantum = Decimal(1).scaleb(-MINOR_UNITS[currency])
    amount = (Decimal(record["amount"]) * rate).quantize(quantum, rounding=ROUND_HALF_EVEN)
    return Booking(record["account_id"], record["direction"], currency, amount)


def _served_balances(client: httpx.Client, account: str) -> dict[str, Decimal]:
    response = client.get(f"/accounts/{account}/balances")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return {b["currency"]: Decimal(b["amount"]) for b in _decimal_json(response)["balances"]}


def _postings(client: httpx.Client, account: str) -> list[dict[str, Any]]:
    postings: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = client.get(
            f"/accounts/{account}/transactions", params={"after": after, "limit": 1000}
        )
        response.raise_for_status()
        page = response.json()
        postings.extend(page["data"])
        after = page["next_after"]
    return postings


def _misbooked(posting: dict[str, Any], sent: dict[str, Booking]) -> bool:
    """A posting no client sent, or one whose account, side, currency or amount is not the
    booking its payment requires."""
    expected = sent.get(posting.get("idempotency_key") or "")
    if expected is None:
        return True
    booked = (posting["account_id"], posting["direction"], posting["currency"])
    if booked != (expected.account_id, expected.direction, expected.currency):
        return True
    try:
        return Decimal(posting["amount"]) != expected.amount
    except ArithmeticError:
        return True


def ledger_figures(
    client: httpx.Client, records: list[dict[str, Any]], converts: Callable[[str], bool]
) -> dict[str, float]:
    """Balances and postings of the records' accounts against the bookings the records require."""
    sent = {r["key"]: expected_booking(r, converts(r["account_id"])) for r in records}
    expected: dict[tuple[str, str], Decimal] = {}
    for record in records:
        if record["outcome"] == "accepted":
            booking = sent[record["key"]]
            key = (booking.account_id, booking.currency)
            expected[key] = expected.get(key, Decimal(0)) + booking.signed
    drift = Decimal(0)
    duplicates = misbooked = 0
    for account in sorted({record["account_id"] for record in records}):
        served = _served_balances(client, account)
        for currency in set(served) | {c for a, c in expected if a == account}:
            drift += abs(served.get(currency, Decimal(0)) - expected.get((account, currency), 0))
        postings = _postings(client, account)
        keys = Counter(p["idempotency_key"] for p in postings if p["idempotency_key"])
        duplicates += sum(n - 1 for n in keys.values())
        misbooked += sum(_misbooked(p, sent) for p in postings)
    return {
        "ledger.balance_drift": float(drift),
        "ledger.duplicate_postings": float(duplicates),
        "ledger.misbooked_postings": float(misbooked),
        "ledger.unconfirmed_payments": float(sum(r["outcome"] == "unknown" for r in records)),
        "ledger.retried_payments": float(sum(r["attempts"] > 1 for r in records)),
        "ledger.payments": float(sum(r["outcome"] == "accepted" for r in records)),
    }


def collect_ledger(base_url: str, truth_path: Path, config: LabConfig) -> dict[str, float]:
    """The ledger's figures for a run, from the clients' records and the flags the run set."""
    records = read_truth(truth_path)
    converts = conversion_rule(truth_path.parent / "flags.json")
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        return ledger_figures(client, records, converts)


# One small order, as a shopper would send it; an idle chain answers it in milliseconds.
