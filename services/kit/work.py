"""The work behind each request (database statements, outgoing calls) and event-loop lag.

Counted in the kit, not in route code: a participant's rewrite of a route keeps the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import Engine, event

# Small counts are told apart one by one; large ones only by order of magnitude.
COUNT_BUCKETS = (0, 1, 2, 3, 4, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
DB_STATEMENTS = Histogram(
    "db_queries_per_request",
    "Database statements executed while serving one request",
    ["service", "route"],
    buckets=COUNT_BUCKETS,
)
OUTGOING_CALLS = Histogram(
    "http_client_calls_per_request",
    "Outgoing HTTP calls made while serving one request",
    ["service", "route"],
    buckets=COUNT_BUCKETS,
)
LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How late the event loop ran a timer: time any request on it had to wait for its turn",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# Every 100 ms: fine enough to see a stall, cheap enough to leave on in every service.
LAG_INTERVAL_S = 0.1


@dataclass
class RequestWork:
    """What one request has cost so far. Mutable, so worker threads that copy the context add
    to the same tally."""

    db_queries: int = 0
    outgoing_calls: int = 0


_current: contextvars.ContextVar[RequestWork | None] = contextvars.ContextVar(
    "request_work", default=None
)


def note_outgoing_call() -> None:
    work = _current.get()
    if work is not None:
        work.outgoing_calls += 1


def count_queries(engine: Engine) -> None:
    """Count every statement the engine sends toward the current request's tally."""

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        work = _current.get()
        if work is not None:
            work.db_queries += 1


@contextlib.contextmanager
def request_tally() -> Iterator[RequestWork]:
    """Count the statements and outgoing calls made while the block serves one request."""
    work = RequestWork()
    token = _current.set(work)
    try:
        yield work
    finally:
        _current.reset(token)


def observe_request(service: str, route: str, work: RequestWork) -> None:
    DB_STATEMENTS.labels(service, route).observe(work.db_queries)
    OUTGOING_CALLS.labels(service, route).observe(work.outgoing_calls)


async def _watch_loop(service: str) -> None:
    loop = asyncio.get_running_loop()
    observe = LOOP_LAG.labels(service).observe
    while True:
        started = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        observe(max(0.0, loop.time() - started - LAG_INTERVAL_S))


@contextlib.asynccontextmanager
async def loop_lag_monitor(service: str) -> AsyncIterator[None]:
    """Measure event-loop lag while the block runs (a service's lifespan)."""
    task = asyncio.create_task(_watch_loop(service), name=f"{service}-loop-lag")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
