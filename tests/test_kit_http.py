"""Outgoing calls through services.kit.http: metrics by peer and trace context across the hop."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, Request
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from services.kit.app import create_service_app
from services.kit.http import ROUTE, create_async_client, create_client
from services.kit.settings import ServiceSettings

router = APIRouter()


@router.get("/widgets/{widget_id}")
async def widget(widget_id: int, request: Request) -> dict[str, str | int | None]:
    return {"widget_id": widget_id, "traceparent": request.headers.get("traceparent")}


def _downstream(tmp_path: Path) -> httpx.ASGITransport:
    settings = ServiceSettings(service_name="kit-downstream", state_dir=tmp_path)
    app = create_service_app(
        settings, title="downstream", routers=[router], tracer_provider=TracerProvider()
    )
    return httpx.ASGITransport(app=app)


def _count(peer: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "http_client_requests_total",
        {"service": "kit-caller", "peer": peer, "route": "/widgets/{id}", "method": "GET",
         "status": status},
    )  # fmt: skip
    return value or 0.0


@pytest.mark.anyio
async def test_async_client_sends_traceparent_and_counts_by_peer(tmp_path: Path) -> None:
    """An async call carries the caller's trace id downstream and is counted under its peer."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = _count("downstream-a", "200")
    async with create_async_client(
        "kit-caller", "downstream-a", "http://downstream",
        timeout=5, tracer_provider=provider, transport=_downstream(tmp_path),
    ) as client:  # fmt: skip
        with provider.get_tracer("test").start_as_current_span("caller") as span:
            response = await client.get("/widgets/7", extensions={ROUTE: "/widgets/{id}"})
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert response.status_code == 200
    assert trace_id in response.json()["traceparent"]
    assert _count("downstream-a", "200") == before + 1
    assert any(s.kind.name == "CLIENT" for s in exporter.get_finished_spans())


def test_a_timeout_is_counted_as_timeout() -> None:
    """A call that times out shows as status="timeout", not as a missing data point."""
    before = _count("downstream-b", "timeout")
    # A listening socket that never answers: the connection opens and the read times out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with create_client(
            "kit-caller", "downstream-b", url, timeout=0.2, tracer_provider=TracerProvider()
        ) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.get("/widgets/1", extensions={ROUTE: "/widgets/{id}"})
    assert _count("downstream-b", "timeout") == before + 1
