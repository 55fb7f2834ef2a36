"""Reconciliation: served balances against an exact recount of the amounts as received."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.ledger import metrics
from services.ledger.api import account_balances
from services.ledger.models import (
    AccountReconciliation,
    ReconciliationPublic,
    Transaction,
    format_amount,
)
from services.ledger.money import exact_booked_amount

log = logging.getLogger("ledger.audit")

# Ids are taken before commit, so a row can become visible after a higher id; look back this far.
LOOKBACK_IDS = 1000


class Auditor:
    """Keeps an exact recount of every posting, reading only rows it has not counted yet."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._recount: dict[tuple[str, str], Decimal] = {}
        # Served balances change only when postings arrive: re-read just those accounts.
        self._served: dict[tuple[str, str], Decimal] = {}
        # Postings can commit between the recount and the balance read; one more round settles.
        self._settling: set[str] = set()
        self._counted: set[int] = set()
        self._cursor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _count_new_rows(self, session: Session) -> set[str]:
        rows = session.execute(
            select(
                Transaction.id,
                Transaction.account_id,
                Transaction.direction,
                Transaction.currency,
                Transaction.amount_received,
                Transaction.fx_rate,
            ).where(Transaction.id > self._cursor - LOOKBACK_IDS)
        )
        changed: set[str] = set()
        for row_id, account, direction, currency, received, rate in rows:
            if row_id in self._counted:
                continue
            self._counted.add(row_id)
            self._cursor = max(self._cursor, row_id)
            amount = exact_booked_amount(received, rate, currency)
            key = (account, currency)
            signed = amount if direction == "credit" else -amount
            self._recount[key] = self._recount.get(key, Decimal(0)) + signed
            changed.add(account)
        return changed

    def run(self) -> ReconciliationPublic:
        """Count new postings, compare every account, and publish the figures as metrics."""
        with self._lock, self._sessions() as session:
            changed = self._count_new_rows(session)
            changed, self._settling = changed | self._settling, changed
            for account in changed:
                for currency, amount in account_balances(session, account).items():
                    served = Decimal(format_amount(amount, currency))
                    self._served[(account, currency)] = served
                    metrics.BALANCE.labels(account, currency).set(float(served))
            postings = session.scalar(select(func.count(Transaction.id))) or 0
            keyed = select(Transaction.idempotency_key).where(
                Transaction.idempotency_key.is_not(None)
            )
            total_keyed = session.scalar(select(func.count()).select_from(keyed.subquery())) or 0
            distinct_keys = (
                session.scalar(select(func.count()).select_from(keyed.distinct().subquery())) or 0
            )
            reused = (
                session.scalar(
                    select(func.count()).select_from(
                        keyed.group_by(Transaction.idempotency_key)
                        .having(func.count() > 1)
                        .subquery()
                    )
                )
                or 0
            )
            lines = []
            for (account, currency), recount in sorted(self._recount.items()):
                balance = self._served.get((account, currency), Decimal(0))
                difference = balance - recount
                lines.append(
                    AccountReconciliation(
                        account_id=account,
                        currency=currency,
                        balance=str(balance),
                        recount=str(recount),
                        difference=str(difference),
                    )
                )
                if account in changed:
                    metrics.RECONCILIATION_DIFFERENCE.labels(account, currency).set(
                        float(difference)
                    )
            metrics.DUPLICATE_POSTINGS.set(total_keyed - distinct_keys)
            metrics.KEYS_REUSED.set(reused)
            metrics.AUDIT_RUNS.inc()
            return ReconciliationPublic(
                postings=postings,
                duplicate_postings=total_keyed - distinct_keys,
                keys_reused=reused,
                accounts=lines,
            )

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.run()
            except Exception:  # the audit must outlive a database blip; the next round retries
                log.exception("reconciliation audit failed")

    def start(self, interval: float) -> None:
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def start_audit(app: FastAPI) -> None:
    app.state.auditor.start(app.state.settings.audit_interval_s)


def stop_audit(app: FastAPI) -> None:
    app.state.auditor.stop()
