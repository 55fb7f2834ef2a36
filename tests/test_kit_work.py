"""The kit's per-request work counts and event-loop lag, on a throwaway service."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from services.kit.app import create_service_app
from services.kit.settings import ServiceSettings

router = APIRouter()


@router.get("/stall/{ms}")
async def stall(ms: int) -> dict[str, int]:
    time.sleep(ms / 1000)  # blocks the event loop on purpose
    return {"stalled_ms": ms}


def lag(service: str) -> tuple[float, float]:
    """(ticks observed, ticks that fired more than 250 ms late)."""
    labels = {"service": service}
    total = REGISTRY.get_sample_value("event_loop_lag_seconds_count", labels) or 0.0
    on_time = REGISTRY.get_sample_value("event_loop_lag_seconds_bucket", labels | {"le": "0.25"})
    return total, total - (on_time or 0.0)


def test_a_blocked_event_loop_shows_as_lag(tmp_path: Path) -> None:
    """A handler that blocks the loop for 400 ms produces a lag observation above 250 ms."""
    settings = ServiceSettings(service_name="kit-lag", state_dir=tmp_path)
    app = create_service_app(
        settings, title="lag", routers=[router], tracer_provider=TracerProvider()
    )
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while lag("kit-lag")[0] < 1:  # the monitor ticks while the loop is free
            assert time.monotonic() < deadline, "no lag observed at all"
            time.sleep(0.05)
        late = lag("kit-lag")[1]
        assert client.get("/stall/400").status_code == 200
        # The late tick is recorded when the loop next runs it; on a busy machine that can take
        # a while, so wait for it rather than for a fixed time.
        deadline = time.monotonic() + 5
        while lag("kit-lag")[1] < late + 1:
            assert time.monotonic() < deadline, "the 400 ms stall left no late tick"
            time.sleep(0.05)


def test_outgoing_calls_and_statements_are_counted_per_route(tmp_path: Path) -> None:
    """Requests without statements or calls are observed with zero, under their route template."""
    settings = ServiceSettings(service_name="kit-work", state_dir=tmp_path)
    app = create_service_app(
        settings, title="work", routers=[router], tracer_provider=TracerProvider()
    )
    with TestClient(app) as client:
        assert client.get("/stall/1").status_code == 200
    labels = {"service": "kit-work", "route": "/stall/{ms}"}
    assert REGISTRY.get_sample_value("db_queries_per_request_count", labels) == 1
    assert REGISTRY.get_sample_value("db_queries_per_request_sum", labels) == 0
    assert REGISTRY.get_sample_value("http_client_calls_per_request_sum", labels) == 0
