"""The one place that wires health, metrics, tracing, logging, flags and errors into a service."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import Session, sessionmaker

from faults import Flags
from services.kit import db, metrics, telemetry, work
from services.kit.decoys import DecoyMiddleware
from services.kit.errors import install_error_handlers
from services.kit.limits import BodyLimitMiddleware
from services.kit.logs import configure_logging
from services.kit.settings import ServiceSettings

log = logging.getLogger("service")

# Sync or async: an async client (httpx, redis.asyncio) can only be closed by awaiting it.
Hook = Callable[[FastAPI], None | Awaitable[None]]


async def _run_hook(hook: Hook, app: FastAPI) -> None:
    result = hook(app)
    if inspect.isawaitable(result):
        await result


health = APIRouter()


# Both probes are async: they must answer from the event loop even when every worker thread
# of a service is busy, or the lab could not tell "stuck" from "dead".
@health.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Alive: the process serves HTTP."""
    return {"status": "ok"}


@health.get("/readyz", include_in_schema=False)
async def readyz(request: Request, response: Response) -> dict[str, str]:
    """Ready: the database answers."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return {"status": "ok"}
    try:
        # Own threads, not the shared pool: a saturated pool must not hide a healthy database.
        limiter = request.app.state.probe_threads
        await anyio.to_thread.run_sync(db.check_database, engine, limiter=limiter)
    except Exception as exc:  # readiness reports the failure instead of raising it
        response.status_code = 503
        return {"status": "unavailable", "detail": f"database: {type(exc).__name__}"}
    return {"status": "ok"}


def from_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that reads `app.state.<name>`, as the app factory set it; the alias that
    uses it gives the type: `AuditorDep = Annotated[Auditor, Depends(from_state("auditor"))]`."""

    # async: a sync dependency costs a threadpool hop per request, and this one never blocks.
    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = f"state_{name}"
    return dependency


async def app_state(request: Request) -> Any:
    """The app's whole state, for a route that uses several things from it; the alias that uses
    it types it with a Protocol of what the factory sets:
    `StateDep = Annotated[ChainState, Depends(app_state)]`."""
    return request.app.state


FlagsDep = Annotated[Flags, Depends(from_state("flags"))]
SettingsDep = Annotated[ServiceSettings, Depends(from_state("settings"))]


@health.get("/drill/triggers", include_in_schema=False)
async def triggers_acted(flags: FlagsDep) -> dict[str, dict[str, int]]:
    """How often each trigger took its path in this process: evidence for drill verify only."""
    return flags.acted()


def _inject_conditions(
    flags: Flags, service: str, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """Wire the environment's latency flags (catalog metadata `injects`) around the database.

    They live here, not in the service: a team that deletes a condition from its own code
    has removed the symptom, not the defect. (`tax.lookup` belongs to the chain's tax-store
    adapter, services/chain/tax.py, which reads its flag itself.)
    """
    for spec in flags.catalog.flags.values():
        if spec.service != service or spec.injects is None:
            continue
        # A fresh targeting key per evaluation: a percentage means that share of commits or
        # statements, not of users.
        delay = functools.partial(_random_key_integer, flags, spec.key)
        if spec.injects == "db.commit":
            db.add_commit_latency(engine, sessions, delay)
        elif spec.injects == "db.statement":
            db.add_query_latency(engine, delay)


def _random_key_integer(flags: Flags, key: str) -> int:
    return flags.integer(key, {"targetingKey": uuid.uuid4().hex})


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
        app.state.probe_threads = anyio.CapacityLimiter(2)
        if metadata is not None:
            db.ensure_schema(app.state.engine, metadata, settings.service_name)
        for hook in on_startup:
            await _run_hook(hook, app)
        log.info("%s ready", settings.service_name)
        try:
            async with work.loop_lag_monitor(settings.service_name):
                yield
        finally:
            for hook in on_shutdown:
                await _run_hook(hook, app)
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
        work.count_queries(engine)
        app.state.engine = engine
        app.state.sessions = sessionmaker(engine, expire_on_commit=False)
        _inject_conditions(app.state.flags, settings.service_name, engine, app.state.sessions)

    install_error_handlers(app)
    # Innermost: a decoy's latency and errors show in the RED metrics and spans like any other.
    app.state.decoy_memory = []
    app.add_middleware(
        DecoyMiddleware,
        flags=app.state.flags,
        service=settings.service_name,
        retained=app.state.decoy_memory,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.REDMiddleware, service=settings.service_name)
    app.include_router(health)
    app.include_router(metrics.router)
    for router in routers:
        app.include_router(router)

    provider = tracer_provider or telemetry.create_tracer_provider(settings)
    # Services build their outgoing clients (services.kit.http) on this provider.
    app.state.tracer_provider = provider
    telemetry.instrument(app, provider, engine)
    return app
