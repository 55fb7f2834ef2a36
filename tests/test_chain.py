"""The chain services A→B→C(→A) wired together as real servers in this process.

Each service is its own uvicorn server on a free port in a thread (its own event loop and
worker pool, as in the lab), with an in-memory span exporter and captured JSON log lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import faults
from services.chain.app import create_app
from services.chain.settings import ChainSettings
from services.kit.logs import JsonFormatter

ROLES = {"chain-a": "a", "chain-b": "b", "chain-c": "c"}
ORDER = {"customer_id": "cust-7", "lines": [{"sku": "TEA-SENCHA", "quantity": 2}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Lines(logging.Handler):
    """Keeps every formatted JSON log line."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@dataclass
class Chain:
    urls: dict[str, str]
    apps: dict[str, FastAPI]
    exporter: InMemorySpanExporter
    logs: _Lines

    @contextlib.contextmanager
    def flags(self, values: dict[str, faults.FlagValue]) -> Iterator[None]:
        """Force flag values in all three services for the block."""
        with contextlib.ExitStack() as stack:
            for app in self.apps.values():
                stack.enter_context(app.state.flags.override(values))
            yield


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    """A, B and C serving on free ports, every flag off; stopped afterwards."""
    faults.reset_flags(tmp_path, faults.load_catalog())
    ports = {name: _free_port() for name in ROLES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    exporter = InMemorySpanExporter()
    apps: dict[str, FastAPI] = {}
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    for name, role in ROLES.items():
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        settings = ChainSettings(
            service_name=name,
            role=role,
            state_dir=tmp_path,
            pricing_url=urls["chain-b"],
            stock_url=urls["chain-c"],
            orders_url=urls["chain-a"],
        )
        apps[name] = create_app(settings, tracer_provider=provider)
        config = uvicorn.Config(
            apps[name], host="127.0.0.1", port=ports[name], log_config=None, lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
    deadline = time.monotonic() + 10
    while not all(server.started for server, _ in servers):
        assert time.monotonic() < deadline, "chain servers did not start"
        time.sleep(0.02)
    logs = _Lines()
    logging.getLogger().addHandler(logs)
    try:
        yield Chain(urls, apps, exporter, logs)
    finally:
        logging.getLogger().removeHandler(logs)
        for server, _ in servers:
            server.should_exit = True
        for _, thread in servers:
            thread.join(timeout=10)


def _post_order(chain: Chain, order: object = ORDER) -> httpx.Response:
    with httpx.Client(base_url=chain.urls["chain-a"], timeout=5, trust_env=False) as client:
        return client.post("/orders", json=order)


@pytest.fixture
def callback_on(chain: Chain) -> Iterator[Chain]:
    """The same chain with chain.fraud_callback on: C calls A back."""
    with chain.flags({"chain.fraud_callback": True}):
        yield chain


def test_an_order_is_priced_and_reserved(chain: Chain) -> None:
    """With every flag off an order crosses A→B→C and comes back confirmed and priced."""
    response = _post_order(chain)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "confirmed"
    assert body["customer_id"] == "cust-7"
    assert body["total"] == "16.40"
    assert body["currency"] == "EUR"
    assert body["reservation_id"]


def test_a_single_order_completes_with_the_callback_on(callback_on: Chain) -> None:
    """An idle chain with the fraud callback closes the cycle A→B→C→A and still answers."""
    response = _post_order(callback_on)
    assert response.status_code == 201, response.text
    assert response.json()["total"] == "16.40"


def test_customer_on_hold_is_refused(callback_on: Chain) -> None:
    """The fraud check turns down a customer on hold with a clear 409."""
    response = _post_order(callback_on, {**ORDER, "customer_id": "hold-42"})
    assert response.status_code == 409
    assert "hold-42" in response.json()["detail"]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ({"customer_id": "cust-1", "lines": []}, 422),
        ({"customer_id": "no spaces", "lines": ORDER["lines"]}, 422),
        ({"customer_id": "cust-1", "lines": [{"sku": "TEA-SENCHA", "quantity": 0}]}, 422),
        ({"customer_id": "cust-1", "lines": ORDER["lines"], "coupon": "FREE"}, 422),
    ],
)
def test_bad_orders_get_a_clear_4xx(chain: Chain, order: object, expected: int) -> None:
    """Malformed orders are refused by chain-a before any downstream call."""
    before = len(chain.exporter.get_finished_spans())
    response = _post_order(chain, order)
    assert response.status_code == expected
    assert response.json()["detail"]
    assert not any(
        s.resource.attributes["service.name"] == "chain-b"
        for s in chain.exporter.get_finished_spans()[before:]
    )


def test_unknown_sku_is_refused_with_the_pricing_reason(chain: Chain) -> None:
    """An order for a product pricing does not know is a 422 that names the product."""
    response = _post_order(chain, {**ORDER, "lines": [{"sku": "TEA-ROOIBOS", "quantity": 1}]})
    assert response.status_code == 422
    assert response.json() == {
        "error": "unprocessable",
        "detail": "pricing: no price for TEA-ROOIBOS",
    }


def _server_spans(spans: tuple[ReadableSpan, ...], trace_id: int) -> list[tuple[str, str]]:
    return [
        (str(s.resource.attributes["service.name"]), s.name)
        for s in sorted(spans, key=lambda s: s.start_time or 0)
        if s.context is not None and s.context.trace_id == trace_id and s.kind.name == "SERVER"
    ]


def test_one_trace_shows_the_cycle_and_its_id_is_in_every_log(callback_on: Chain) -> None:
    """One order's trace holds A→B→C→A server spans; its trace id is in all three logs."""
    response = _post_order(callback_on)
    assert response.status_code == 201
    trace_hex = response.headers["x-trace-id"]
    trace_id = int(trace_hex, 16)
    deadline = time.monotonic() + 5
    expected = [
        ("chain-a", "POST /orders"),
        ("chain-b", "POST /quotes"),
        ("chain-c", "POST /reservations"),
        ("chain-a", "GET /customers/{customer_id}/check"),
    ]
    while time.monotonic() < deadline:
        spans = callback_on.exporter.get_finished_spans()
        if len(_server_spans(spans, trace_id)) >= 4:
            break
        time.sleep(0.05)
    assert _server_spans(spans, trace_id) == expected
    # Each hop's server span descends from the one before it: one path, not four traces.
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    check = next(
        s for s in spans if s.name == "GET /customers/{customer_id}/check" and
        s.context is not None and s.context.trace_id == trace_id and s.kind.name == "SERVER"
    )  # fmt: skip
    ancestors = []
    span: ReadableSpan | None = check
    while span is not None and span.parent is not None:
        span = by_id.get(span.parent.span_id)
        if span is not None and span.kind.name == "SERVER":
            ancestors.append(str(span.resource.attributes["service.name"]))
    assert ancestors == ["chain-c", "chain-b", "chain-a"]
    logged = {line["service"] for line in callback_on.logs.lines if line["trace_id"] == trace_hex}
    assert logged == {"chain-a", "chain-b", "chain-c"}


def test_metrics_show_the_worker_pool_and_the_service_map(chain: Chain) -> None:
    """Each service reports its pool size and its calls by peer, so the map needs no traces."""
    assert _post_order(chain).status_code == 201
    with httpx.Client(timeout=5, trust_env=False) as client:
        text = client.get(chain.urls["chain-b"] + "/metrics").text
    assert 'chain_workers{service="chain-b"} 8.0' in text
    assert 'chain_workers_busy{service="chain-b"}' in text
    assert 'http_client_requests_total{method="POST",peer="chain-c",route="/reservations",' in text
