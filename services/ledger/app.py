"""The ledger service: a small payments ledger."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.kit.app import create_service_app
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
    app.state.auditor = Auditor(app.state.sessions)
    return app
