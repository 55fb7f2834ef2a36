"""Decoys: generic faults (latency, errors, CPU burn, memory growth, log flood) around any route.

The program runner sets a `generic.<kind>` flag (catalog kind `decoy`) with flagd targeting on
the evaluation context's `service` and `route` (the route template) and a fractional share on
its targeting key. This middleware applies what the flags serve before the route runs, so no
service's code knows about them, and names none of them in telemetry: a decoy shows only as the
symptom it makes (reveal mode adds a `drill.decoy.<flag>` span attribute, see faults.Flags).

With no decoy flag live, a request costs one tuple check, not a flag evaluation.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import anyio
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from faults import Flags, decoy_flag
from services.kit.errors import send_problem

# Health probes and scrapes stay untouched: a decoy must not get a container restarted.
UNTOUCHED_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/drill/triggers"})
# CPU is burnt in slices that yield to the event loop in between, so a burn shows in CPU time
# and in the request's latency, never as a loop blocked for the whole burn.
BURN_SLICE_S = 0.002
# Memory growth stops here per process: a leak's climb that never gets a service OOM-killed.
MEMORY_CAP_BYTES = 64 * 1024 * 1024

LATENCY, ERRORS, CPU, MEMORY, LOGS = (
    decoy_flag(kind) for kind in ("latency", "error_rate", "cpu_burn", "memory_growth", "log_flood")
)

# Plausible noise: the chatter of a busy service, naming nothing the teams could act on.
NOISE = (
    ("pool", "connection pool at %d%% of capacity; request waited for a connection"),
    ("cache", "cache refresh for segment %d took longer than its budget"),
    ("retry", "keepalive probe %d unanswered; reconnecting"),
    ("gc", "slow consumer on event stream partition %d; buffering"),
    ("config", "configuration reload skipped: checksum %d unchanged"),
)


def route_templates(app: Any) -> tuple[tuple[re.Pattern[str], str], ...]:
    """The app's route templates with a regex each, in the router's order.

    Read from the OpenAPI paths (public, prefixes included), not the router's internals, which
    change between FastAPI versions; the probes and /metrics are not in it and need no match.
    """
    paths = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
    return tuple((compile_path(template)[0], template) for template in paths)


def burn_cpu(seconds: float) -> None:
    """Busy the calling thread for `seconds` of its own CPU time."""
    until = time.thread_time() + seconds
    total = 0
    while time.thread_time() < until:
        total += sum(range(200))


class DecoyMiddleware:
    """Applies the live decoy flags that target this service (and route) to each request."""

    def __init__(self, app: ASGIApp, flags: Flags, service: str, retained: list[bytes]) -> None:
        self.app = app
        self.flags = flags
        self.service = service
        # What memory growth holds (app.state.decoy_memory); emptied on the first request after
        # the flag is off.
        self.retained = retained
        self._routes: tuple[tuple[re.Pattern[str], str], ...] | None = None

    def _route_of(self, scope: Scope) -> str:
        """The route template this request will be served by (as RED labels it), or ""."""
        if self._routes is None:
            self._routes = route_templates(scope.get("app"))
        path = scope["path"]
        return next((template for regex, template in self._routes if regex.match(path)), "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTOUCHED_PATHS:
            await self.app(scope, receive, send)
            return
        live = self.flags.live_decoys()
        if MEMORY not in live and self.retained:
            self.retained.clear()
        if not live:
            await self.app(scope, receive, send)
            return
        context: dict[str, Any] = {
            # A fresh key per request: a percent means that share of requests, not of users.
            "targetingKey": uuid.uuid4().hex,
            "service": self.service,
            "route": self._route_of(scope),
        }
        served = {key: self.flags.integer(key, context) for key in live}
        if delay_ms := served.get(LATENCY, 0):
            await anyio.sleep(delay_ms / 1000)
        if burn_ms := served.get(CPU, 0):
            await self._burn(burn_ms / 1000)
        if grow_kib := served.get(MEMORY, 0):
            self._grow(grow_kib * 1024)
        if lines := served.get(LOGS, 0):
            _flood(lines)
        if status := served.get(ERRORS, 0):
            await _unavailable(send, status)
            return
        await self.app(scope, receive, send)

    async def _burn(self, seconds: float) -> None:
        while seconds > 0:
            step = min(seconds, BURN_SLICE_S)
            burn_cpu(step)
            seconds -= step
            await anyio.sleep(0)

    def _grow(self, size: int) -> None:
        if (len(self.retained) + 1) * size > MEMORY_CAP_BYTES:
            return
        # Filled, not zeroed: calloc'd zero pages would not show in the process's RSS.
        self.retained.append(b"\x5a" * size)


def _flood(lines: int) -> None:
    for n in range(lines):
        name, message = NOISE[n % len(NOISE)]
        logging.getLogger(f"service.{name}").warning(message, 50 + (n * 7) % 50)


async def _unavailable(send: Send, status: int) -> None:
    await send_problem(send, status, "temporarily unavailable; retry later", retry_after=1)
