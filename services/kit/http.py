"""Outgoing HTTP: clients whose calls are traced and counted by peer (RED for the client side).

Every call a service makes to another goes through one of these clients, so the metrics alone
can draw the service map (`service` → `peer`) and the trace context crosses every hop.
"""

from __future__ import annotations

import time

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Counter, Gauge, Histogram

from services.kit.metrics import LATENCY_BUCKETS
from services.kit.work import note_outgoing_call

# Callers name the peer's route template here (e.g. "/profiles/{id}"); the raw path of a call
# with ids in it would give every id its own time series.
ROUTE = "drill.route"

CLIENT_LABELS = ["service", "peer", "route", "method", "status"]
CLIENT_REQUESTS = Counter(
    "http_client_requests",
    "Outgoing HTTP calls; status is the HTTP status, or timeout / error when none came back",
    CLIENT_LABELS,
)
CLIENT_DURATION = Histogram(
    "http_client_request_duration_seconds",
    "Time from sending an outgoing call to its response, timeout or error",
    CLIENT_LABELS,
    buckets=LATENCY_BUCKETS,
)
CLIENT_IN_FLIGHT = Gauge(
    "http_client_requests_in_flight",
    "Outgoing calls waiting for an answer right now",
    ["service", "peer"],
)


class _Call:
    """The bookkeeping of one outgoing call, shared by the sync and async transports."""

    def __init__(self, service: str, peer: str, request: httpx.Request) -> None:
        route = request.extensions.get(ROUTE) or request.url.path
        self.labels = (service, peer, str(route), request.method)
        self.in_flight = CLIENT_IN_FLIGHT.labels(service, peer)
        self.in_flight.inc()
        note_outgoing_call()
        self.started = time.perf_counter()

    def finish(self, status: str) -> None:
        self.in_flight.dec()
        span_context = trace.get_current_span().get_span_context()
        exemplar = (
            {"trace_id": format(span_context.trace_id, "032x")} if span_context.is_valid else None
        )
        labels = (*self.labels, status)
        CLIENT_REQUESTS.labels(*labels).inc()
        CLIENT_DURATION.labels(*labels).observe(time.perf_counter() - self.started, exemplar)


def _failure_status(exc: httpx.TransportError) -> str:
    return "timeout" if isinstance(exc, httpx.TimeoutException) else "error"


class MeteredTransport(httpx.BaseTransport):
    """A blocking transport that records each call's peer, route, status and duration."""

    def __init__(self, service: str, peer: str, inner: httpx.BaseTransport | None = None) -> None:
        self.service, self.peer = service, peer
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = _Call(self.service, self.peer, request)
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError as exc:
            call.finish(_failure_status(exc))
            raise
        except BaseException:
            call.finish("error")
            raise
        call.finish(str(response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncMeteredTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of MeteredTransport."""

    def __init__(
        self, service: str, peer: str, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.service, self.peer = service, peer
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = _Call(self.service, self.peer, request)
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            call.finish(_failure_status(exc))
            raise
        except BaseException:
            call.finish("error")
            raise
        call.finish(str(response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def create_client(
    service: str,
    peer: str,
    base_url: str,
    *,
    timeout: httpx.Timeout | float | None,
    tracer_provider: TracerProvider,
    transport: httpx.BaseTransport | None = None,
    limits: httpx.Limits | None = None,
) -> httpx.Client:
    """A blocking client for calls from `service` to `peer`: traced, metered, W3C headers sent.

    `timeout` has no default on purpose: every caller decides how long it is willing to wait.
    """
    inner = transport or httpx.HTTPTransport(limits=limits or httpx.Limits())
    client = httpx.Client(
        base_url=base_url,
        timeout=timeout,
        transport=MeteredTransport(service, peer, inner),
        # A proxy from the shell must not capture calls between lab services.
        trust_env=False,
    )
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracer_provider)
    return client


def create_async_client(
    service: str,
    peer: str,
    base_url: str,
    *,
    timeout: httpx.Timeout | float | None,
    tracer_provider: TracerProvider,
    transport: httpx.AsyncBaseTransport | None = None,
    limits: httpx.Limits | None = None,
) -> httpx.AsyncClient:
    """An asyncio client for calls from `service` to `peer`: traced, metered, W3C headers sent."""
    inner = transport or httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())
    client = httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        transport=AsyncMeteredTransport(service, peer, inner),
        trust_env=False,
    )
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracer_provider)
    return client
