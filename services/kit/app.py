"""The one place that wires health, metrics, tracing, logging, flags and errors into a service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData
from sqlalchemy.orm import sessionmaker

from faults import Flags
from services.kit import db, metrics, telemetry
from services.kit.errors import install_error_handlers
from services.kit.limits import BodyLimitMiddleware
from services.kit.logs import configure_logging
from services.kit.settings import ServiceSettings

log = logging.getLogger("service")

Hook = Callable[[FastAPI], None]

health = APIRouter()


@health.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """Alive: the process serves HTTP."""
    return {"status": "ok"}


@health.get("/readyz", include_in_schema=False)
def readyz(request: Request, response: Response) -> dict[str, str]:
    """Ready: the database answers."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return {"status": "ok"}
    try:
        db.check_database(engine)
    except Exception as exc:  # readiness reports the failure instead of raising it
        response.status_code = 503
        return {"status": "unavailable", "detail": f"database: {type(exc).__name__}"}
    return {"status": "ok"}


async def get_flags(request: Request) -> Flags:
    # async: a sync dependency costs a threadpool hop per request, and this one never blocks.
    flags: Flags = request.app.state.flags
    return flags


FlagsDep = Annotated[Flags, Depends(get_flags)]


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    routers: Sequence[APIRouter],
    metadata: MetaData | None = None,
    tracer_provider: TracerProvider | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
) -> FastAPI:
    """A FastAPI app with the lab's health, metrics, tracing, logs, flags and error mapping."""
    configure_logging(settings.service_name, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.flags.start()
        if metadata is not None:
            db.ensure_schema(app.state.engine, metadata, settings.service_name)
        for hook in on_startup:
            hook(app)
        log.info("%s ready", settings.service_name)
        try:
            yield
        finally:
            for hook in on_shutdown:
                hook(app)
            app.state.flags.close()
            if metadata is not None:
                app.state.engine.dispose()
            provider.shutdown()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.settings = settings
    app.state.flags = Flags(
        settings.flags_file, service=settings.service_name, poll_ms=settings.flag_poll_ms
    )
    engine = None
    if metadata is not None:
        engine = db.create_db_engine(settings)
        app.state.engine = engine
        app.state.sessions = sessionmaker(engine, expire_on_commit=False)

    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.REDMiddleware, service=settings.service_name)
    app.include_router(health)
    app.include_router(metrics.router)
    for router in routers:
        app.include_router(router)

    provider = tracer_provider or telemetry.create_tracer_provider(settings)
    telemetry.instrument(app, provider, engine)
    return app
