"""Ledger routes: post a transaction, read balances, list postings, reconcile."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.kit.app import FlagsDep, from_state
from services.kit.db import SessionDep
from services.kit.errors import NotFound, problems
from services.ledger.metrics import POSTINGS
from services.ledger.models import (
    ACCOUNT_ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_POSTING_ID,
    BalancePublic,
    BalancesPublic,
    ReconciliationPublic,
    Transaction,
    TransactionCreate,
    TransactionPublic,
    TransactionsPublic,
    format_amount,
)
from services.ledger.money import FX_RATES_TO_USD
from services.ledger.settings import LedgerSettings

router = APIRouter(tags=["ledger"])

SettingsDep = Annotated[LedgerSettings, Depends(from_state("settings"))]

AccountPath = Annotated[str, Path(pattern=ACCOUNT_ID_PATTERN)]


def account_balances(session: Session, account_id: str) -> dict[str, float]:
    """Balance per booked currency, summed from the account's postings."""
    totals: dict[str, float] = {}
    for tx in session.scalars(select(Transaction).where(Transaction.account_id == account_id)):
        totals[tx.currency] = totals.get(tx.currency, 0.0) + tx.signed_amount
    return totals


def _account_link(operation: str) -> dict[str, object]:
    return {
        "operationRef": f"#/paths/~1accounts~1{{account_id}}~1{operation}/get",
        "parameters": {"account_id": "$response.body#/account_id"},
    }


@router.post(
    "/transactions",
    status_code=201,
    responses={
        201: {
            "links": {
                "GetBalances": _account_link("balances"),
                "ListTransactions": _account_link("transactions"),
            }
        }
    },
)
def post_transaction(
    body: TransactionCreate,
    settings: SettingsDep,
    session: SessionDep,
    flags: FlagsDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN)
    ] = None,
) -> TransactionPublic:
    base = settings.base_currency
    amount = float(body.amount)
    currency, fx_rate = body.currency, "1"
    if body.currency != base and flags.enabled(
        "ledger.fx_conversion", {"targetingKey": body.account_id}
    ):
        fx_rate = FX_RATES_TO_USD[body.currency]
        amount = amount * float(fx_rate)
        currency = base
    tx = Transaction(
        account_id=body.account_id,
        direction=body.direction,
        amount=amount,
        currency=currency,
        amount_received=body.amount,
        currency_received=body.currency,
        fx_rate=fx_rate,
        idempotency_key=idempotency_key,
    )
    previous = session.scalars(
        select(Transaction).where(
            Transaction.account_id == body.account_id, Transaction.currency == currency
        )
    )
    tx.balance_after = sum(t.signed_amount for t in previous) + tx.signed_amount
    session.add(tx)
    session.commit()
    POSTINGS.labels(currency, body.direction).inc()
    return TransactionPublic.of(tx)


@router.get("/accounts/{account_id}/balances", responses=problems(404))
def get_balances(account_id: AccountPath, session: SessionDep) -> BalancesPublic:
    totals = account_balances(session, account_id)
    if not totals:
        raise NotFound(f"account {account_id!r} has no postings")
    return BalancesPublic(
        account_id=account_id,
        balances=[
            BalancePublic(currency=currency, amount=format_amount(total, currency))
            for currency, total in sorted(totals.items())
        ],
    )


@router.get("/accounts/{account_id}/transactions")
def list_transactions(
    account_id: AccountPath,
    session: SessionDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_POSTING_ID, description="Return postings with id above this")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TransactionsPublic:
    rows = session.scalars(
        select(Transaction)
        .where(Transaction.account_id == account_id, Transaction.id > after)
        .order_by(Transaction.id)
        .limit(limit + 1)
    ).all()
    page = rows[:limit]
    return TransactionsPublic(
        data=[TransactionPublic.of(tx) for tx in page],
        next_after=page[-1].id if len(rows) > limit else None,
    )


@router.get("/fx/rates")
def fx_rates(response: Response) -> dict[str, str]:
    """Reference rates into USD used for conversion."""
    response.headers["Cache-Control"] = "max-age=3600"
    return dict(FX_RATES_TO_USD)


class Reconciler(Protocol):
    """What the route needs of the auditor (services.ledger.audit, which imports this module)."""

    def run(self) -> ReconciliationPublic: ...


AuditorDep = Annotated[Reconciler, Depends(from_state("auditor"))]


@router.get("/reconciliation")
def reconciliation(auditor: AuditorDep) -> ReconciliationPublic:
    """Served balances against an exact recount of the amounts as received."""
    return auditor.run()
