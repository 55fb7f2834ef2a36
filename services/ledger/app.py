"""The ledger service: a small payments ledger."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.kit.app import create_service_app
from services.kit.db import add_commit_latency
from services.ledger import api
from services.ledger.audit import Auditor, start_audit, stop_audit
from services.ledger.models import Base
from services.ledger.settings import LedgerSettings


def create_app(
    settings: LedgerSettings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    settings = settings or LedgerSettings()
    app = create_service_app(
        settings,
        title="ledger",
        routers=[api.router],
        metadata=Base.metadata,
        tracer_provider=tracer_provider,
        on_startup=[start_audit],
        on_shutdown=[stop_audit],
    )
    flags = app.state.flags
    add_commit_latency(
        app.state.engine,
        app.state.sessions,
        # Random per commit: a percentage in the flag means that share of commits.
        lambda: flags.integer("ledger.commit_latency_ms", {"targetingKey": _commit_id()}),
    )
    app.state.auditor = Auditor(app.state.sessions)
    return app


def _commit_id() -> str:
    return uuid.uuid4().hex
