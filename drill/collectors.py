"""Per-service figures for drill verify, measured against ground truth after the load."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx

# ISO 4217 minor units of the currencies the payment client sends. Kept apart from the
# ledger's own table on purpose: the checker must not move when a participant edits the service.
MINOR_UNITS = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0}


def _decimal_json(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def expected_booking(record: dict[str, Any]) -> Decimal:
    """What a confirmed payment must add: amount times rate, half-even to the minor unit."""
    amount, rate = Decimal(record["amount"]), Decimal(record["fx_rate"])
    quantum = Decimal(1).scaleb(-MINOR_UNITS[record["booked_currency"]])
    booked = (amount * rate).quantize(quantum, rounding=ROUND_HALF_EVEN)
    return booked if record["direction"] == "credit" else -booked


def read_truth(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _served_balances(client: httpx.Client, account: str) -> dict[str, Decimal]:
    response = client.get(f"/accounts/{account}/balances")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return {b["currency"]: Decimal(b["amount"]) for b in _decimal_json(response)["balances"]}


def _postings_per_key(client: httpx.Client, account: str) -> Counter[str]:
    keys: Counter[str] = Counter()
    after: int | None = 0
    while after is not None:
        response = client.get(
            f"/accounts/{account}/transactions", params={"after": after, "limit": 1000}
        )
        response.raise_for_status()
        page = response.json()
        keys.update(tx["idempotency_key"] for tx in page["data"] if tx["idempotency_key"])
        after = page["next_after"]
    return keys


def collect_ledger(base_url: str, truth_path: Path) -> dict[str, float]:
    """Drift between served balances and confirmed payments; postings per idempotency key."""
    records = read_truth(truth_path)
    expected: dict[tuple[str, str], Decimal] = {}
    for record in records:
        if record["outcome"] == "accepted":
            key = (record["account_id"], record["booked_currency"])
            expected[key] = expected.get(key, Decimal(0)) + expected_booking(record)
    accounts = sorted({record["account_id"] for record in records})
    drift = Decimal(0)
    duplicates = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for account in accounts:
            served = _served_balances(client, account)
            for currency in set(served) | {c for a, c in expected if a == account}:
                drift += abs(
                    served.get(currency, Decimal(0)) - expected.get((account, currency), 0)
                )
            duplicates += sum(n - 1 for n in _postings_per_key(client, account).values())
    return {
        "ledger.balance_drift": float(drift),
        "ledger.duplicate_postings": float(duplicates),
        "ledger.unconfirmed_payments": float(sum(r["outcome"] == "unknown" for r in records)),
        "ledger.payments": float(sum(r["outcome"] == "accepted" for r in records)),
    }


Collector = Callable[[str, Path], dict[str, float]]
COLLECTORS: dict[str, Collector] = {"ledger": collect_ledger}
