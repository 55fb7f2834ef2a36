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
from drill.collectors.chain import collect_chain, collect_stock
from drill.native import LabConfig
from services.chain.app import create_app
from services.chain.settings import ChainSettings
from services.kit.logs import JsonFormatter
from tests.conftest import assert_problem
from tests.polling import poll_until

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

    def started() -> None:
        waiting = [
            name for name, (server, _) in zip(ROLES, servers, strict=True) if not server.started
        ]
        assert not waiting, f"{', '.join(waiting)} serving"

    poll_until(started, "the chain servers start", timeout=30, interval=0.02)
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
    assert body["total"] == "17.55"  # 16.40 net + 7% VAT (1.148, to the cent)
    assert body["currency"] == "EUR"
    assert body["reservation_id"]


def test_a_single_order_completes_with_the_callback_on(callback_on: Chain) -> None:
    """An idle chain with the fraud callback closes the cycle A→B→C→A and still answers."""
    response = _post_order(callback_on)
    assert response.status_code == 201, response.text
    assert response.json()["total"] == "17.55"


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
    """An order for a product pricing does not know is a 422 problem that names the product."""
    response = _post_order(chain, {**ORDER, "lines": [{"sku": "TEA-ROOIBOS", "quantity": 1}]})
    assert_problem(
        response,
        422,
        "urn:drill:problem:unprocessable",
        "Unprocessable",
        "pricing: no price for TEA-ROOIBOS",
    )


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
    expected = [
        ("chain-a", "POST /orders"),
        ("chain-b", "POST /quotes"),
        ("chain-c", "POST /reservations"),
        ("chain-a", "GET /customers/{customer_id}/check"),
    ]

    def all_four() -> tuple[ReadableSpan, ...]:
        # A server span is finished after its response went out: the order's comes last.
        spans = callback_on.exporter.get_finished_spans()
        assert _server_spans(spans, trace_id) == expected, _server_spans(spans, trace_id)
        logged = {
            line["service"] for line in callback_on.logs.lines if line["trace_id"] == trace_hex
        }
        assert logged == {"chain-a", "chain-b", "chain-c"}, f"log lines only from {logged}"
        return spans

    spans = poll_until(all_four, "the order's four server spans and log lines", timeout=30)
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


def test_metrics_show_the_worker_pool_and_the_service_map(chain: Chain) -> None:
    """Each service reports its pool size and its calls by peer, so the map needs no traces."""
    assert _post_order(chain).status_code == 201
    with httpx.Client(timeout=5, trust_env=False) as client:
        text = client.get(chain.urls["chain-b"] + "/metrics").text
    assert 'chain_workers{service="chain-b"} 8.0' in text
    assert 'chain_workers_busy{service="chain-b"}' in text
    assert 'http_client_requests_total{method="POST",peer="chain-c",route="/reservations",' in text


def test_the_total_includes_vat_from_the_tax_store(chain: Chain) -> None:
    """Tea at the reduced rate, a kettle at the standard rate: VAT per line, to the cent."""
    order = {
        "customer_id": "cust-3",
        "lines": [{"sku": "TEA-EARL-GREY", "quantity": 3}, {"sku": "KETTLE-STEEL", "quantity": 1}],
    }
    body = _post_order(chain, order).json()
    # 19.50 net at 7% is 1.365 -> 1.36 (half-even); 39.90 at 19% is 7.581 -> 7.58.
    assert body["tax"] == "8.94"
    assert body["total"] == "68.34"


def test_the_tax_lookup_takes_the_stores_latency(chain: Chain) -> None:
    """chain.b_latency_ms slows pricing's tax lookup, and the lookup is a span of its own."""
    with chain.flags({"chain.b_latency_ms": 150}):
        started = time.perf_counter()
        response = _post_order(chain)
        elapsed = time.perf_counter() - started
    assert response.status_code == 201
    assert elapsed >= 0.15
    lookups = [s for s in chain.exporter.get_finished_spans() if s.name == "tax rates lookup"]
    assert lookups and (lookups[-1].end_time or 0) - (lookups[-1].start_time or 0) >= 150e6


def test_stock_tells_what_an_order_holds(chain: Chain) -> None:
    """chain-c answers which reservations an order holds; an unknown order holds none."""
    order_id = _post_order(chain).json()["order_id"]
    with httpx.Client(base_url=chain.urls["chain-c"], timeout=5, trust_env=False) as client:
        held = client.get("/reservations", params={"order_id": [order_id, "no-such-order"]})
    assert held.status_code == 200
    assert [(r["order_id"], r["status"], r["units"]) for r in held.json()["data"]] == [
        (order_id, "held", 2)
    ]


def _shop(chain: Chain, truth: Path, orders: list[dict[str, object]], totals: list[str]) -> None:
    """Place orders as the Shopper does and write its ground truth lines."""
    records: list[dict[str, object]] = []
    for index, (order, total) in enumerate(zip(orders, totals, strict=True)):
        ref = f"ref-{index}"
        records.append({"ref": ref, "event": "sent", "at": time.time() - 60, **order,
                        "expected_total": total})  # fmt: skip
        response = _post_order(chain, order)
        body = response.json()
        records.append({"ref": ref, "event": "answered", "http_status": response.status_code,
                        "order_id": body.get("order_id"), "status": body.get("status"),
                        "total": body.get("total")})  # fmt: skip
    records.append({"ref": "ref-lost", "event": "sent", "at": time.time() - 60, **orders[0],
                    "expected_total": totals[0]})  # fmt: skip
    records.append({"event": "stopping", "at": time.time()})
    truth.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_collectors_judge_from_what_the_shopper_sent(chain: Chain, tmp_path: Path) -> None:
    """With the callback off a customer on hold is confirmed, a total the shopper's price list
    disagrees with is a mismatch, and an order sent a minute before the end and never answered
    is unanswered; each confirmed order holds its stock once."""
    truth = tmp_path / "truth.jsonl"
    held = {**ORDER, "customer_id": "hold-9"}
    # 17.55 is right for two Sencha; the shopper's own list says 17.56 for the second order.
    _shop(chain, truth, [ORDER, held, ORDER], ["17.55", "17.55", "17.56"])
    front = collect_chain(chain.urls["chain-a"], truth, LabConfig(root=tmp_path))
    assert front["chain.total_mismatches"] == 1
    assert front["chain.unanswered_orders"] == 1
    assert front["chain.orders_after_load"] == 1
    stock = collect_stock(chain.urls["chain-c"], truth, LabConfig(root=tmp_path))
    assert stock["chain.held_orders_confirmed"] == 1
    assert stock["chain.confirmed_orders"] == 3
    assert stock["chain.orders_not_held_once"] == 0
