"""Ledger domain metrics: what finance would watch, named by what they measure."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POSTINGS = Counter("ledger_postings", "Postings stored", ["currency", "direction"])
BALANCE = Gauge(
    "ledger_balance", "Account balance as the ledger serves it", ["account", "currency"]
)
RECONCILIATION_DIFFERENCE = Gauge(
    "ledger_reconciliation_difference",
    "Served balance minus an exact recount of the amounts as received",
    ["account", "currency"],
)
DUPLICATE_POSTINGS = Gauge(
    "ledger_duplicate_postings",
    "Postings beyond the first that share an idempotency key",
)
KEYS_REUSED = Gauge(
    "ledger_idempotency_keys_reused",
    "Idempotency keys with more than one posting",
)
AUDIT_RUNS = Counter("ledger_audit_runs", "Reconciliation audits completed")
