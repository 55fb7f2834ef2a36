"""RED metrics for the server, from a pure ASGI middleware, and the /metrics route."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request, Response
from opentelemetry import trace
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.kit import work
from services.kit.logs import current_service

log = logging.getLogger("http")

# Defined once at import: building a second app must not register them again.
# 0.15 and 0.25 are bucket bounds so the latency objectives (feed 150 ms, chain 250 ms) are
# exact in PromQL, not interpolated.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SERVER_REQUESTS = Counter(
    "http_server_requests",
    "HTTP requests served",
    ["service", "route", "method", "status"],
)
SERVER_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Time to serve an HTTP request",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
SERVER_IN_FLIGHT = Gauge(
    "http_server_requests_in_flight",
    "HTTP requests being served right now",
    ["service"],
)

# Scrapes and probes would drown the RED signal of the real routes.
UNMEASURED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class REDMiddleware:
    """Counts, times and logs each request by route template; adds the trace id header.

    It also tallies the request's database statements and outgoing calls (services.kit.work).
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNMEASURED_PATHS:
            await self.app(scope, receive, send)
            return
        token = current_service.set(self.service)
        span_context = trace.get_current_span().get_span_context()
        trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else None
        status = 500
        started = time.perf_counter()

        async def send_with_trace_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_id:
                    headers = list(message.get("headers", []))
                    headers.append((b"x-trace-id", trace_id.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        in_flight = SERVER_IN_FLIGHT.labels(self.service)
        in_flight.inc()
        with work.request_tally() as request_work:
            try:
                await self.app(scope, receive, send_with_trace_id)
            finally:
                in_flight.dec()
                elapsed = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None) or "<unmatched>"
                work.observe_request(self.service, route, request_work)
                labels = (self.service, route, scope["method"], str(status))
                SERVER_REQUESTS.labels(*labels).inc()
                SERVER_DURATION.labels(*labels).observe(
                    elapsed, exemplar={"trace_id": trace_id} if trace_id else None
                )
                log.info(
                    "%s %s %s",
                    scope["method"],
                    route,
                    status,
                    extra={"duration_ms": round(elapsed * 1000, 2), "status": status},
                )
                current_service.reset(token)


router = APIRouter()


# async, like the probes: a scrape must answer while every worker thread of the service is busy.
@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (with exemplars) when the scraper asks for it."""
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        body = openmetrics_exposition.generate_latest(REGISTRY)  # type: ignore[no-untyped-call]
        return Response(body, media_type=openmetrics_exposition.CONTENT_TYPE_LATEST)
    body = text_exposition.generate_latest(REGISTRY)
    return Response(body, media_type=text_exposition.CONTENT_TYPE_LATEST)
