"""Posting latency against table size: the shipped ledger against the fp-drift fix.

For the shipped code and for the patched code (solutions/fp-drift.patch), starts a native lab
and, for N in 0, 1000, 5000, 20000 postings already on ONE account, grows the table to N with
bulk SQL inserts that match that version's columns (shipped: float amount/balance_after;
patched: integer amount_minor/balance_after_minor plus its ledger_balances row), then times
200 sequential POST /transactions to that account. Prints median and p95 per size and the
shipped/patched ratio.

Run: .venv/bin/python benchmarks/ledger_table_growth.py
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from decimal import Decimal

from _lab import (
    Lab,
    backend_note,
    header,
    http_client,
    median,
    percentile,
    print_table,
    running_lab,
)
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

SIZES = (0, 1000, 5000, 20000)
POSTS = 200
WARMUP_POSTS = 20
ACCOUNT = "growth-acct"
AMOUNT = Decimal("1.25")
CHUNK = 5000


@dataclass
class Point:
    code: str
    existing: int
    median_ms: float
    p95_ms: float
    seed_s: float
    balance_ok: bool


def is_patched(engine: Engine) -> bool:
    columns = {c["name"] for c in inspect(engine).get_columns("ledger_transactions")}
    return "amount_minor" in columns


def existing_postings(engine: Engine) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM ledger_transactions WHERE account_id = :a"), {"a": ACCOUNT}
        ).scalar()
    return int(count or 0)


# How each version's columns take a pre-loaded USD credit: the account's balance before the
# load, the insert, and the amount per row (shipped: a float; patched: integer cents).
SHIPPED_START = (
    "SELECT COALESCE(SUM(amount), 0) FROM ledger_transactions "
    "WHERE account_id = :a AND currency = 'USD'"
)
SHIPPED_INSERT = (
    "INSERT INTO ledger_transactions (account_id, direction, amount, currency, "
    "balance_after, amount_received, currency_received, fx_rate, idempotency_key) "
    "VALUES (:a, 'credit', :m, 'USD', :b, :r, 'USD', '1', NULL)"
)
PATCHED_START = (
    "SELECT amount_minor FROM ledger_balances WHERE account_id = :a AND currency = 'USD'"
)
PATCHED_INSERT = (
    "INSERT INTO ledger_transactions (account_id, direction, amount_minor, currency, "
    "balance_after_minor, amount_received, currency_received, fx_rate, "
    "idempotency_key) VALUES (:a, 'credit', :m, 'USD', :b, :r, 'USD', '1', NULL)"
)
# The patched ledger also keeps the account's balance in a row of its own.
PATCHED_BALANCE = (
    "INSERT INTO ledger_balances (account_id, currency, amount_minor) "
    "VALUES (:a, 'USD', :m) ON CONFLICT (account_id, currency) "
    "DO UPDATE SET amount_minor = ledger_balances.amount_minor + excluded.amount_minor"
)


def seed(engine: Engine, rows: int, patched: bool) -> None:
    """Insert `rows` USD credits of AMOUNT on ACCOUNT, keeping running balances right."""
    if rows <= 0:
        return
    step: int | float
    if patched:
        start_sql, insert_sql, step = PATCHED_START, PATCHED_INSERT, int(AMOUNT * 100)
    else:
        start_sql, insert_sql, step = SHIPPED_START, SHIPPED_INSERT, float(AMOUNT)
    with engine.begin() as conn:
        balance = type(step)(conn.execute(text(start_sql), {"a": ACCOUNT}).scalar() or 0)
        insert = text(insert_sql)
        for first in range(0, rows, CHUNK):
            batch = []
            for _ in range(min(CHUNK, rows - first)):
                balance += step
                batch.append({"a": ACCOUNT, "m": step, "b": balance, "r": str(AMOUNT)})
            conn.execute(insert, batch)
        if patched:
            conn.execute(text(PATCHED_BALANCE), {"a": ACCOUNT, "m": step * rows})
    with engine.begin() as conn:
        conn.execute(text("ANALYZE ledger_transactions"))


def measure(lab: Lab) -> list[Point]:
    code = "shipped" if lab.label == "shipped" else "patched"
    engine = lab.engine()
    points: list[Point] = []
    payment = {"account_id": ACCOUNT, "direction": "credit", "currency": "USD", "amount": "1.25"}
    try:
        patched = is_patched(engine)
        kind = "integer minor units" if patched else "float"
        print(f"[{lab.label}] ledger at {lab.ledger_url}; amount columns: {kind}")
        with http_client(lab.ledger_url) as client:
            for _ in range(WARMUP_POSTS):
                client.post("/transactions", json={**payment, "account_id": "warmup"})
            for size in SIZES:
                t0 = time.perf_counter()
                seed(engine, size - existing_postings(engine), patched)
                seed_s = time.perf_counter() - t0
                existing = existing_postings(engine)
                # The auditor recounts new rows; let it do so now, not during the timed posts.
                client.get("/reconciliation").raise_for_status()
                times: list[float] = []
                last: dict[str, str] = {}
                for _ in range(POSTS):
                    start = time.perf_counter()
                    response = client.post("/transactions", json=payment)
                    times.append((time.perf_counter() - start) * 1000)
                    response.raise_for_status()
                    last = response.json()
                expected = AMOUNT * (existing + POSTS)
                ok = Decimal(last["balance_after"]) == expected
                point = Point(code, existing, median(times), percentile(times, 0.95), seed_s, ok)
                print(
                    f"[{lab.label}] N={existing}: median {point.median_ms:.1f} ms, "
                    f"p95 {point.p95_ms:.1f} ms (seeded in {seed_s:.1f} s)"
                )
                points.append(point)
    finally:
        engine.dispose()
    return points


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    backend = backend_note()
    header(
        "POST /transactions latency against table size: shipped vs patched (fp-drift)",
        [
            f"path: native lab, {backend}, one uvicorn process, tracing off; loopback",
            f"N postings pre-loaded on one account by bulk SQL insert; then {POSTS} sequential "
            f"POSTs (USD credit {AMOUNT}) to that account, one client",
            "the shipped POST sums every posting of the account; the patched one updates "
            "a balance row",
        ],
    )
    started = time.perf_counter()
    results: dict[str, list[Point]] = {}
    for solution in (None, "fp-drift"):
        with running_lab(solution, backend=backend, only=["ledger"]) as lab:
            points = measure(lab)
        results[points[0].code] = points
    print()
    rows = []
    for index, size in enumerate(SIZES):
        shipped, patched = results["shipped"][index], results["patched"][index]
        rows.append(
            [
                size,
                shipped.existing,
                shipped.median_ms,
                shipped.p95_ms,
                patched.median_ms,
                patched.p95_ms,
                shipped.median_ms / patched.median_ms,
                shipped.p95_ms / patched.p95_ms,
                "yes" if shipped.balance_ok and patched.balance_ok else "NO",
            ]
        )
    print_table(
        [
            "N target",
            "N actual",
            "shipped p50 ms",
            "shipped p95 ms",
            "patched p50 ms",
            "patched p95 ms",
            "ratio p50",
            "ratio p95",
            "balance ok",
        ],
        rows,
    )
    print()
    print(
        "ratio = shipped / patched; N actual = postings on the account before the timed "
        f"{POSTS} (each size's timed posts add {POSTS}); balance ok = last balance_after "
        "equals every posting on the account"
    )
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
