"""drill evidence: the phase 3 bundle's sections, in order, from real spans, logs and results.

No Jaeger runs on these machines (the compose lab's Jaeger is the only one). The spans here are
real: a ledger app in-process exports them through the same OTLP encoder its exporter posts to
Jaeger, and the lab test takes them from a native lab's real exporters (tests/otlp.py). A
stand-in of Jaeger's query API (`JaegerStandIn`) converts them into the JSON Jaeger answers
with, as Jaeger's own OTLP translator does: `{"data": [trace]}` from `GET /api/traces/{id}`,
and OTLP/JSON wrapped in `{"result": ...}` from `GET /api/v3/traces/{id}`. The runner's
`/claims` and Prometheus's range queries are stand-ins too, except in the lab test, which asks
a real Prometheus scraping the real chain.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import math
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, TracesData
from typer.testing import CliRunner

from drill import evidence
from drill.cli import app
from drill.native import free_port_offset
from drill.verify import CheckResult, VerifyResult
from tests.conftest import REPO_ROOT, need_server
from tests.servers import QuietHandler, closed_url, serving

runner = CliRunner()
TOKEN = "team-7-secret-token"
SECTIONS = [
    "Symptom",
    "The team's accepted claim",
    "Traces",
    "Key metrics",
    "Log lines of these traces",
    "The last verify run",
    "Code the traces point to",
]


# -- stand-in HTTP servers --------------------------------------------------------------------

Reply = tuple[int, str, bytes]


def _json_reply(status: int, body: Any) -> Reply:
    return status, "application/json", json.dumps(body).encode()


@contextmanager
def stand_in(handle: Callable[[str, Mapping[str, str]], Reply]) -> Iterator[str]:
    """A server on a free port of 127.0.0.1 answering GETs with handle(path, headers)."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status, content_type, body = handle(self.path, dict(self.headers))
            self.reply(status, body, content_type)

    with serving(Handler) as url:
        yield url


# -- Jaeger's JSON, as Jaeger's OTLP translator makes it ---------------------------------------


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return json.dumps(MessageToDict(value))


def _tag(key: str, value: Any) -> dict[str, Any]:
    kind = (
        "bool"
        if isinstance(value, bool)
        else "int64"
        if isinstance(value, int)
        else "float64"
        if isinstance(value, float)
        else "string"
    )
    return {"key": key, "type": kind, "value": value if kind != "string" else str(value)}


SPAN_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _spans_of(
    requests: Iterable[ExportTraceServiceRequest], trace_id: str
) -> Iterator[tuple[ResourceSpans, Any, Span]]:
    for request in requests:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.trace_id.hex() == trace_id:
                        yield resource_spans, scope_spans.scope, span


def jaeger_trace(
    requests: Iterable[ExportTraceServiceRequest], trace_id: str
) -> dict[str, Any] | None:
    """One trace in the JSON of Jaeger's `GET /api/traces/{id}` (its `data` items): a process
    per resource, the parent as a CHILD_OF reference, kind, scope and status as tags, events as
    logs; times in microseconds."""
    processes: dict[str, dict[str, Any]] = {}
    ids: dict[str, str] = {}
    spans = []
    for resource_spans, scope, span in _spans_of(requests, trace_id):
        resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
        key = json.dumps(resource, sort_keys=True)
        if key not in ids:
            ids[key] = f"p{len(ids) + 1}"
            processes[ids[key]] = {
                "serviceName": resource.get("service.name", ""),
                "tags": [_tag(k, v) for k, v in resource.items() if k != "service.name"],
            }
        tags = [_tag(a.key, _any_value(a.value)) for a in span.attributes]
        if scope.name:
            tags.append(_tag("otel.scope.name", scope.name))
        if scope.version:
            tags.append(_tag("otel.scope.version", scope.version))
        if span.kind in SPAN_KINDS:
            tags.append(_tag("span.kind", SPAN_KINDS[span.kind]))
        if span.status.code == 1:
            tags.append(_tag("otel.status_code", "OK"))
        elif span.status.code == 2:
            tags += [_tag("otel.status_code", "ERROR"), _tag("error", True)]
        if span.status.message:
            tags.append(_tag("otel.status_description", span.status.message))
        references = []
        if span.parent_span_id:
            references.append(
                {"refType": "CHILD_OF", "traceID": trace_id, "spanID": span.parent_span_id.hex()}
            )
        spans.append(
            {
                "traceID": trace_id,
                "spanID": span.span_id.hex(),
                "operationName": span.name,
                "references": references,
                "startTime": span.start_time_unix_nano // 1000,
                "duration": (span.end_time_unix_nano - span.start_time_unix_nano) // 1000,
                "tags": tags,
                "logs": [
                    {
                        "timestamp": event.time_unix_nano // 1000,
                        "fields": [
                            _tag("event", event.name),
                            *(_tag(a.key, _any_value(a.value)) for a in event.attributes),
                        ],
                    }
                    for event in span.events
                ],
                "processID": ids[key],
                "warnings": None,
            }
        )
    if not spans:
        return None
    return {"traceID": trace_id, "spans": spans, "processes": processes, "warnings": None}


def otlp_json_trace(
    requests: Iterable[ExportTraceServiceRequest], trace_id: str, *, hex_ids: bool = True
) -> dict[str, Any] | None:
    """One trace as OTLP/JSON TracesData, as Jaeger's `GET /api/v3/traces/{id}` holds it:
    enums as integers, ids as hex (or base64, as protobuf's generic JSON mapping has them)."""
    data = TracesData()
    for request in requests:
        for resource_spans in request.resource_spans:
            copy = ResourceSpans(resource=resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                kept = [s for s in scope_spans.spans if s.trace_id.hex() == trace_id]
                if kept:
                    copy.scope_spans.add(scope=scope_spans.scope, spans=kept)
            if copy.scope_spans:
                data.resource_spans.append(copy)
    if not data.resource_spans:
        return None
    document = MessageToDict(data, use_integers_for_enums=True)
    if hex_ids:
        for resource_spans in document["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64decode(span[key]).hex()
    return document


class JaegerStandIn:
    """Jaeger's query API over exported OTLP requests: the legacy JSON and the v3 endpoint."""

    def __init__(self, requests: list[ExportTraceServiceRequest], legacy: bool = True) -> None:
        self.requests = requests
        self.legacy = legacy
        self.asked: list[str] = []

    def __call__(self, path: str, headers: Mapping[str, str]) -> Reply:
        self.asked.append(path)
        legacy = re.fullmatch(r"/api/traces/([0-9a-f]{32})", path)
        if legacy and self.legacy:
            trace = jaeger_trace(self.requests, legacy.group(1))
            if trace is None:
                return _json_reply(
                    404,
                    {
                        "data": None,
                        "total": 0,
                        "limit": 0,
                        "offset": 0,
                        "errors": [{"code": 404, "msg": "trace not found"}],
                    },
                )
            return _json_reply(
                200, {"data": [trace], "total": 0, "limit": 0, "offset": 0, "errors": None}
            )
        v3 = re.fullmatch(r"/api/v3/traces/([0-9a-f]{32})", path)
        if v3:
            document = otlp_json_trace(self.requests, v3.group(1))
            if document is None:
                return _json_reply(404, {"error": {"httpCode": 404, "message": "trace not found"}})
            return _json_reply(200, {"result": document})
        return 404, "text/plain; charset=utf-8", b"404 page not found\n"


# -- the runner's /claims and Prometheus ------------------------------------------------------


def claim(ident: int, scenario: str, status: str, filed: str, text: str, **extra: Any) -> dict:
    return {
        "id": ident,
        "team": "team-7",
        "scenario": scenario,
        "text": text,
        "trace_ids": [],
        "promql": None,
        "status": status,
        "note": None,
        "filed_at": filed,
        "judged_at": None if status == "pending" else filed,
        **extra,
    }


def runner_stand_in(claims: list[dict]) -> Callable[[str, Mapping[str, str]], Reply]:
    def handle(path: str, headers: Mapping[str, str]) -> Reply:
        if path != "/claims":
            return _json_reply(404, {"detail": "Not Found"})
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return _json_reply(401, {"detail": "unknown team token"})
        return _json_reply(200, {"claims": claims})

    return handle


@dataclass
class PrometheusStandIn:
    """`/api/v1/query_range` answers: a matrix per query substring, errors for `bad(`."""

    series: Mapping[str, list[tuple[dict[str, str], list[str]]]]

    def __post_init__(self) -> None:
        self.queries: list[dict[str, list[str]]] = []

    def __call__(self, path: str, headers: Mapping[str, str]) -> Reply:
        parts = urlsplit(path)
        if parts.path == "/-/ready":
            return 200, "text/plain", b"Prometheus Server is Ready.\n"
        if parts.path != "/api/v1/query_range":
            return 404, "text/plain", b"404 page not found\n"
        params = parse_qs(parts.query)
        self.queries.append(params)
        query = params["query"][0]
        if "bad(" in query:
            return _json_reply(
                400,
                {
                    "status": "error",
                    "errorType": "bad_data",
                    "error": '1:1: parse error: unknown function with name "bad"',
                },
            )
        start, step = float(params["start"][0]), float(params["step"][0])
        result = [
            {
                "metric": labels,
                "values": [[start + i * step, value] for i, value in enumerate(values)],
            }
            for needle, found in self.series.items()
            if needle in query
            for labels, values in found
        ]
        return _json_reply(
            200, {"status": "success", "data": {"resultType": "matrix", "result": result}}
        )


# -- real spans and log lines from an in-process ledger ---------------------------------------


@dataclass(frozen=True)
class Captured:
    """What one in-process ledger run left: its OTLP export, trace ids and log file."""

    requests: list[ExportTraceServiceRequest]
    posting: str  # a POST /transactions
    retry: str  # the same payment again, same Idempotency-Key
    balance: str  # a GET of the balances
    log_file: Path


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """Three ledger requests served in-process; their spans encoded as the OTLP exporter posts
    them, and the service's own JSON log lines written to a file."""
    from fastapi.testclient import TestClient
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.kit.logs import JsonFormatter
    from services.ledger.app import create_app
    from services.ledger.settings import LedgerSettings

    state = tmp_path_factory.mktemp("ledger")
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "ledger"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(LedgerSettings(state_dir=state, audit_interval_s=60), tracer_provider=provider)
    log_file = state / "ledger.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(JsonFormatter("ledger"))
    logging.getLogger().addHandler(handler)
    payment = {"account_id": "acct-ev1", "direction": "credit", "currency": "EUR", "amount": "1.10"}
    try:
        with TestClient(app) as client:
            first = client.post("/transactions", json=payment, headers={"Idempotency-Key": "k-1"})
            again = client.post("/transactions", json=payment, headers={"Idempotency-Key": "k-1"})
            balance = client.get("/accounts/acct-ev1/balances")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert first.status_code == again.status_code == 201 and balance.status_code == 200
    return Captured(
        requests=[encode_spans(exporter.get_finished_spans())],
        posting=first.headers["x-trace-id"],
        retry=again.headers["x-trace-id"],
        balance=balance.headers["x-trace-id"],
        log_file=log_file,
    )


def source_range(function: Callable[..., Any]) -> str:
    """`path:start-end` of a function from inspect (decorators included): an independent check
    of the bundle's parsed line ranges."""
    lines, start = inspect.getsourcelines(function)
    path = Path(inspect.getsourcefile(function) or "").resolve().relative_to(REPO_ROOT)
    return f"{path}:{start}-{start + len(lines) - 1}"


# -- the CLI against a state dir of the test's own --------------------------------------------


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab state dir on free ports; no token, and no stray source URLs from the shell."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("DRILL_STATE_DIR", str(state))
    monkeypatch.setenv("DRILL_PORT_OFFSET", str(free_port_offset()))
    for name in (
        evidence.TEAM_TOKEN_ENV,
        evidence.SCOREBOARD_URL_ENV,
        evidence.JAEGER_URL_ENV,
        evidence.PROMETHEUS_URL_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    return state


def bundle_cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["evidence", *args, "--root", str(REPO_ROOT)])
    return result.exit_code, result.output


def sections(markdown: str) -> dict[str, str]:
    """Each numbered section's text by its title."""
    parts = re.split(r"^## \d+\. (.+)$", markdown, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def write_result(state: Path, run: str, result: VerifyResult) -> Path:
    path = state / "runs" / run / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(result.to_json())
    return path


def verify_result(scenario: str, started: str, passed: bool, drift: float) -> VerifyResult:
    return VerifyResult(
        scenario=scenario,
        baseline=False,
        passed=passed,
        started_at=started,
        load_seconds=60.0,
        users=20,
        run_dir="(test)",
        checks=[
            CheckResult(
                "balances equal what clients were confirmed",
                "ledger.balance_drift",
                None,
                drift,
                0.0,
                None,
                drift <= 0,
            ),
            CheckResult(
                "posting stays fast",
                "p95_ms",
                "POST /transactions",
                math.nan,
                400.0,
                None,
                False,
                kind="latency",
                basis="calibrated",
            ),
            CheckResult(
                "trigger ledger.fx_conversion=on acted",
                "trigger.ledger.fx_conversion.acted",
                None,
                312.0,
                None,
                100.0,
                True,
            ),
        ],
        figures={"ledger.balance_drift": drift},
        warmup_seconds=0.0,
    )


# -- the tests --------------------------------------------------------------------------------


def test_sections_come_in_order_each_naming_its_source(
    captured: Captured, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every source up, --out holds the seven sections in order, each with its source, and
    the team token appears nowhere in it."""
    (state / "logs").mkdir()
    shutil.copy(captured.log_file, state / "logs" / "ledger.log")
    write_result(
        state, "fp-drift-1", verify_result("fp-drift", "2026-01-01T10:00:00+00:00", False, 2.5)
    )
    claims = [claim(4, "fp-drift", "accepted", "2026-01-01T10:05:00+00:00", "Float money drifts.")]
    prometheus = PrometheusStandIn({"ledger_duplicate_postings": [({}, ["0", "1", "3"])]})
    out = tmp_path / "bundle.md"
    with (
        stand_in(JaegerStandIn(captured.requests)) as jaeger,
        stand_in(runner_stand_in(claims)) as scoreboard,
        stand_in(prometheus) as prom,
    ):
        monkeypatch.setenv(evidence.JAEGER_URL_ENV, jaeger)
        monkeypatch.setenv(evidence.SCOREBOARD_URL_ENV, scoreboard)
        monkeypatch.setenv(evidence.PROMETHEUS_URL_ENV, prom)
        monkeypatch.setenv(evidence.TEAM_TOKEN_ENV, TOKEN)
        code, output = bundle_cli("fp-drift", "--trace-id", captured.posting, "--out", str(out))
    assert code == 0, output
    markdown = out.read_text()
    titles = re.findall(r"^## (\d+)\. (.+)$", markdown, flags=re.MULTILINE)
    assert titles == [(str(n), title) for n, title in enumerate(SECTIONS, start=1)]
    for title, text in sections(markdown).items():
        assert text.lstrip().startswith("Source: "), f"{title} names no source"
    assert TOKEN not in markdown and TOKEN not in output
    assert markdown.startswith("# Evidence bundle: fp-drift (Balances that do not add up)")
    assert "written to" in output and all(f"ok  {n}." in output for n in range(1, 8))


def test_span_tree_from_jaeger_json_of_real_ledger_spans(captured: Captured) -> None:
    """Jaeger's JSON of a real POST /transactions becomes a tree: the server span at the root,
    its SQL statements indented under it by start time, with route, status and statement."""
    document = {"data": [jaeger_trace(captured.requests, captured.posting)], "errors": None}
    spans = evidence.spans_from_jaeger(document)
    assert spans and {s.service for s in spans} == {"ledger"}
    assert {s.trace_id for s in spans} == {captured.posting}
    tree = evidence.span_tree(spans)
    assert tree[0].startswith("ledger  POST /transactions  ")
    assert "http.route=/transactions" in tree[0] and "http.status_code=201" in tree[0]
    assert "http.url=" not in tree[0], "a server span's own URL is noise"
    children = [line for line in tree[1:] if line.startswith("  ledger  ")]
    assert children, tree
    statements = [line for line in children if "db.statement=" in line]
    assert any("SELECT ledger_transactions.id" in line for line in statements), tree
    assert any("INSERT INTO ledger_transactions" in line for line in statements), tree
    # Children by start time: the read of the account's postings comes before the insert.
    select = next(i for i, line in enumerate(tree) if "db.statement=SELECT ledger_tr" in line)
    insert = next(i for i, line in enumerate(tree) if "db.statement=INSERT INTO ledger" in line)
    assert select < insert
    # The column list folds so that what selects (the WHERE clause) stays in view.
    read = next(line for line in statements if "SELECT ledger_transactions.id" in line)
    assert "SELECT ledger_transactions.id, … (11 columns) FROM ledger_transactions" in read
    assert "WHERE ledger_transactions.account_id = ? AND ledger_transactions.currency = ?" in read


def test_runs_of_siblings_doing_the_same_work_fold_into_one_line() -> None:
    """A run of one statement per followee shows as one line with ×N; an error span shows
    its status and message; a span whose parent is missing is a root that says so."""
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def span(ident: str, parent: str | None, name: str, at_ms: float, **attrs: Any) -> Any:
        status = attrs.pop("status", "unset")
        return evidence.Span(
            service=attrs.pop("service", "feed"),
            name=name,
            span_id=ident,
            parent_id=parent,
            start=start + timedelta(milliseconds=at_ms),
            duration_ms=attrs.pop("ms", 2.0),
            attributes=attrs,
            status=status,
            status_message=attrs.pop("message", None) if status == "error" else None,
        )

    spans = [
        span("r", None, "GET /feed/{user_id}", 0, ms=900.0, **{"http.route": "/feed/{user_id}"}),
        *(
            span(f"q{i}", "r", "SELECT feed", 1 + i, **{"db.statement": "SELECT * FROM posts"})
            for i in range(50)
        ),
        span("c", "r", "GET", 60, status="error", message="ReadTimeout", **{"span.kind": "client"}),
        span("o", "elsewhere", "POST /orders", 5, service="chain-a"),
    ]
    tree = evidence.span_tree(spans)
    assert tree[0].startswith("feed  GET /feed/{user_id}  900.0 ms")
    folded = [line for line in tree if "SELECT feed" in line]
    assert len(folded) == 1 and "×50 (total 100.0 ms" in folded[0], tree
    assert any("GET  2.0 ms" in line and "ERROR (ReadTimeout)" in line for line in tree), tree
    orphan = next(line for line in tree if "POST /orders" in line)
    assert orphan.startswith("chain-a") and "parent elsewhere not in the trace" in orphan


def test_v3_otlp_json_gives_the_same_spans_as_the_legacy_json(captured: Captured) -> None:
    """The OTLP-native answer (hex ids as Jaeger v2 has them, or base64 as older releases did)
    adapts to the same spans as the legacy JSON: ids, parents, names, services, durations."""
    legacy = evidence.spans_from_jaeger(
        {"data": [jaeger_trace(captured.requests, captured.posting)]}
    )

    def key(spans: list[evidence.Span]) -> list[tuple[Any, ...]]:
        return sorted((s.span_id, s.parent_id, s.name, s.service, s.trace_id) for s in spans)

    for hex_ids in (True, False):
        document = otlp_json_trace(captured.requests, captured.posting, hex_ids=hex_ids)
        v3 = evidence.spans_from_otlp_json({"result": document})
        assert key(v3) == key(legacy)
        # The legacy JSON keeps microseconds, OTLP nanoseconds.
        durations = {s.span_id: s.duration_ms for s in legacy}
        assert all(abs(s.duration_ms - durations[s.span_id]) < 0.001 for s in v3)
        assert any(s.attributes.get("span.kind") == "server" for s in v3)


def test_traces_fall_back_to_the_v3_api_and_say_when_a_trace_is_missing(
    captured: Captured, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Jaeger without the legacy JSON API is asked its v3 API; a trace Jaeger does not hold is
    named as missing, and the other traces are still shown."""
    missing = uuid.uuid4().hex
    standin = JaegerStandIn(captured.requests, legacy=False)
    with stand_in(standin) as jaeger:
        monkeypatch.setenv(evidence.JAEGER_URL_ENV, jaeger)
        code, output = bundle_cli("fp-drift", "--trace-id", captured.posting, "--trace-id", missing)
    assert code == 0, output
    traces = sections(output)["Traces"]
    assert f"GET {jaeger}/api/v3/traces/{{traceID}}" in traces
    assert f"/api/v3/traces/{captured.posting}" in standin.asked
    posting, absent = traces.split(f"### Trace `{missing}`")
    assert "ledger  POST /transactions" in posting
    assert "Jaeger does not have this trace" in absent


def test_log_lines_are_found_by_trace_id_in_real_log_files(captured: Captured, state: Path) -> None:
    """The service's own JSON lines of each trace are shown in ts order, only that trace's; with
    --log-lines below their number, warnings and errors are kept first and the cut is said."""
    logs = state / "logs"
    logs.mkdir()
    shutil.copy(captured.log_file, logs / "ledger.log")
    # Another service's file with a warning and a non-JSON line (a traceback on stderr).
    extra = [
        json.dumps(
            {
                "ts": "2000-01-01T00:00:00.000+00:00",
                "level": "warning",
                "service": "chain-a",
                "trace_id": captured.posting,
                "span_id": "00f067aa0ba902b7",
                "msg": "pricing attempt 1 failed: ReadTimeout",
                "logger": "chain",
            }
        ),
        "Traceback (most recent call last):",
    ]
    (logs / "chain-a.log").write_text("\n".join(extra) + "\n")
    code, output = bundle_cli(
        "fp-drift", "--trace-id", captured.posting, "--trace-id", captured.balance
    )
    assert code == 0, output
    text = sections(output)["Log lines of these traces"]
    assert f"`{logs}/*.log`" in text and "docker compose logs" in text
    posting, balance = text.split(f"### Trace `{captured.balance}`")
    assert "POST /transactions 201" in posting and "GET /accounts" not in posting
    assert "GET /accounts/{account_id}/balances 200" in balance
    assert "duration_ms=" in posting and "[http]" in posting
    # ts order: the other file's (older) warning comes first.
    assert posting.index("pricing attempt 1 failed") < posting.index("POST /transactions 201")

    code, output = bundle_cli("fp-drift", "--trace-id", captured.posting, "--log-lines", "1")
    text = sections(output)["Log lines of these traces"]
    assert "pricing attempt 1 failed" in text and "POST /transactions 201" not in text
    # How many lines carry the trace now: the cut note counts the ones left out.
    carried = len(evidence.read_log_lines(logs, [captured.posting])[captured.posting])
    assert carried >= 2
    shown = "Showing 1 of them (--log-lines 1)"
    assert shown in text and f"{carried - 1} not shown" in text, text


def test_the_last_verify_run_is_the_newest_result_of_the_scenario(state: Path) -> None:
    """The newest result.json of the scenario (by its started_at, offsets honoured; not another
    scenario's) is shown with its verdict and each check's figure, value and bound."""
    # 12:00+03:00 is 09:00 UTC: older than 10:00 UTC despite its later clock reading.
    older = verify_result("fp-drift", "2026-01-01T12:00:00+03:00", True, 0)
    write_result(state, "fp-drift-a", older)
    newest = verify_result("fp-drift", "2026-01-01T10:00:00+00:00", False, 7.25)
    path = write_result(state, "fp-drift-b", newest)
    other = verify_result("n-plus-one", "2026-01-01T12:00:00+00:00", True, 0)
    write_result(state, "n-plus-one-c", other)
    code, output = bundle_cli("fp-drift", "--trace-id", uuid.uuid4().hex)
    assert code == 0, output
    text = sections(output)["The last verify run"]
    assert f"Source: `{path}`" in text
    assert "**FAIL**: `drill verify fp-drift` started 2026-01-01T10:00:00+00:00" in text
    assert "triggers on, 20 users for 60.0 s" in text
    rows = [
        "| FAIL | invariant | balances equal what clients were confirmed | "
        "ledger.balance_drift | 7.25 | <= 0 |",
        "| FAIL | latency | posting stays fast | p95_ms [POST /transactions] | nan | <= 400 |",
        "| pass | invariant | trigger ledger.fx_conversion=on acted | "
        "trigger.ledger.fx_conversion.acted | 312 | >= 100 |",
    ]
    for row in rows:
        assert row in text, text


def test_the_newest_accepted_claim_is_fetched_with_the_team_token(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's newest accepted claim for the scenario is shown (text, cited traces, query)
    and its query is evaluated under Metrics; rejected, pending and other scenarios' claims are
    not; the token never appears."""
    cited = uuid.uuid4().hex
    claims = [
        claim(1, "fp-drift", "accepted", "2026-01-01T10:00:00+00:00", "An old accepted claim."),
        claim(
            2,
            "fp-drift",
            "accepted",
            "2026-01-01T10:30:00+01:00",
            "Balances are floats; retries post twice.",
            trace_ids=[cited],
            promql="max(ledger_duplicate_postings)",
            note="Well argued.",
        ),
        claim(3, "fp-drift", "rejected", "2026-01-01T10:45:00+00:00", "It is the network."),
        claim(4, "n-plus-one", "accepted", "2026-01-01T11:00:00+00:00", "Feed claim."),
    ]
    prometheus = PrometheusStandIn({"ledger_duplicate_postings": [({}, ["0", "2", "5"])]})
    with stand_in(runner_stand_in(claims)) as url, stand_in(prometheus) as prom:
        monkeypatch.setenv(evidence.SCOREBOARD_URL_ENV, url)
        monkeypatch.setenv(evidence.PROMETHEUS_URL_ENV, prom)
        monkeypatch.setenv(evidence.TEAM_TOKEN_ENV, TOKEN)
        code, output = bundle_cli("fp-drift", "--trace-id", uuid.uuid4().hex)
    assert code == 0, output
    text = sections(output)["The team's accepted claim"]
    # 10:30+01:00 is 09:30 UTC: older than claim 1, so claim 1 is the newest accepted.
    assert "Claim #1" in text and "An old accepted claim." in text
    assert "It is the network" not in text and "Feed claim" not in text
    assert TOKEN not in output

    claims[1]["filed_at"] = "2026-01-01T10:30:00+00:00"
    with stand_in(runner_stand_in(claims)) as url, stand_in(prometheus) as prom:
        monkeypatch.setenv(evidence.SCOREBOARD_URL_ENV, url)
        monkeypatch.setenv(evidence.PROMETHEUS_URL_ENV, prom)
        code, output = bundle_cli("fp-drift", "--trace-id", uuid.uuid4().hex)
    text = sections(output)["The team's accepted claim"]
    assert "Claim #2" in text and "> Balances are floats; retries post twice." in text
    assert "Instructor's note: Well argued." in text
    assert f"`{cited}`" in text and "not in this bundle" in text
    metrics = sections(output)["Key metrics"]
    assert "| the accepted claim's own query | - | 0 | 2 | 5 | 5 |" in metrics


def test_claims_that_cannot_be_had_are_stated(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token, a refused token, and no accepted claim each say so in the claim section."""
    code, output = bundle_cli("fp-drift", "--trace-id", uuid.uuid4().hex)
    assert "DRILL_TEAM_TOKEN is unset" in sections(output)["The team's accepted claim"]
    claims = [claim(5, "fp-drift", "pending", "2026-01-01T10:00:00+00:00", "Maybe floats.")]
    with stand_in(runner_stand_in(claims)) as url:
        monkeypatch.setenv(evidence.SCOREBOARD_URL_ENV, url)
        monkeypatch.setenv(evidence.TEAM_TOKEN_ENV, "not-the-token")
        _, refused = bundle_cli("fp-drift", "--trace-id", uuid.uuid4().hex)
        monkeypatch.setenv(evidence.TEAM_TOKEN_ENV, TOKEN)
        _, pending = bundle_cli("fp-drift", "--trace-id", uuid.uuid4().hex)
    assert "refused the team token (HTTP 401)" in sections(refused)["The team's accepted claim"]
    assert "No accepted claim for `fp-drift` yet (1 pending)." in pending


def test_unreachable_sources_are_stated_and_the_rest_is_still_written(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no runner, Jaeger or Prometheus listening, no logs and no runs, every section says
    what it could not reach, and the bundle is still written (exit 0)."""
    for name in (evidence.SCOREBOARD_URL_ENV, evidence.JAEGER_URL_ENV, evidence.PROMETHEUS_URL_ENV):
        monkeypatch.setenv(name, closed_url())
    monkeypatch.setenv(evidence.TEAM_TOKEN_ENV, TOKEN)
    code, output = bundle_cli("circular-deadlock", "--trace-id", uuid.uuid4().hex)
    assert code == 0, output
    found = sections(output)
    assert "Orders that never come back" in found["Symptom"]
    assert "runner API not reachable at http://127.0.0.1:" in found["The team's accepted claim"]
    assert "Source: Jaeger not reachable at http://127.0.0.1:" in found["Traces"]
    assert "Prometheus not reachable at http://127.0.0.1:" in found["Key metrics"]
    assert "no log directory at" in found["Log lines of these traces"]
    assert "no result.json for `circular-deadlock`" in found["The last verify run"]
    assert "nothing to map" in found["Code the traces point to"]


def test_the_default_source_urls_follow_the_port_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without overrides the runner is 8000, Jaeger 16686 and Prometheus 9090, plus the offset."""
    from drill.native import LabConfig

    for name in (evidence.SCOREBOARD_URL_ENV, evidence.JAEGER_URL_ENV, evidence.PROMETHEUS_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    config = LabConfig(REPO_ROOT, port_offset=100)
    assert evidence.scoreboard_url(config) == "http://127.0.0.1:8100"
    assert evidence.jaeger_url(config) == "http://127.0.0.1:16786"
    assert evidence.prometheus_url(config) == "http://127.0.0.1:9190"
    monkeypatch.setenv(evidence.SCOREBOARD_URL_ENV, "http://runner.local:8000/")
    assert evidence.scoreboard_url(config) == "http://runner.local:8000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fp-drfit", "--trace-id", "0af7651916cd43dd8448eb211c80319c"], "known: "),
        (["fp-drift", "--trace-id", "0af7651916cd43dd8448eb211c80319"], "32 hex digits"),
        (["fp-drift", "--trace-id", "0af7651916cd43dd8448eb211c80319z"], "32 hex digits"),
        (["fp-drift", "--trace-id", "0" * 32], "not all zero"),
        (
            ["fp-drift", "--trace-id", "0af7651916cd43dd8448eb211c80319c", "--since", "soon"],
            "--since",
        ),
        (
            ["fp-drift", "--trace-id", "0af7651916cd43dd8448eb211c80319c", "--since", "30s"],
            "a minute",
        ),
        (["fp-drift"], "--trace-id"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    state: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """An unknown scenario, a malformed trace id, a bad --since or none at all: a clear error,
    exit 2, and no file."""
    out = tmp_path / "bundle.md"
    result = runner.invoke(
        app,
        ["evidence", *args, "--out", str(out), "--root", str(REPO_ROOT)],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_metrics_show_min_median_max_last_per_series(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scenario query over the window becomes rows of min, median, max and last, per
    series, in its unit (seconds as ms); a series without data and a failed query say so."""
    prometheus = PrometheusStandIn(
        {
            "chain_workers_busy / chain_workers": [
                ({"service": "chain-b"}, ["0.25", "1", "1", "1"]),
                ({"service": "chain-a"}, ["0", "0.5", "NaN", "1"]),
            ],
            'route="/orders"}[1m])))': [({}, ["0.2", "0.4", "2.5"])],
        }
    )
    with stand_in(prometheus) as prom:
        monkeypatch.setenv(evidence.PROMETHEUS_URL_ENV, prom)
        code, output = bundle_cli(
            "circular-deadlock", "--trace-id", uuid.uuid4().hex, "--since", "1h"
        )
    assert code == 0, output
    text = sections(output)["Key metrics"]
    assert f"Source: Prometheus at {prom}" in text
    assert "| worker pool in use (busy / size) | service=chain-a | 0 | 0.5 | 1 | 1 |" in text
    assert "| worker pool in use (busy / size) | service=chain-b | 0.25 | 1 | 1 | 1 |" in text
    assert "| order latency p99 | - | 200 ms | 400 ms | 2,500 ms | 2,500 ms |" in text
    assert "| orders completed per second | no data in the window |" in text
    asked = {q["query"][0] for q in prometheus.queries}
    assert asked == {q.expr for q in evidence.SCENARIO_METRICS["circular-deadlock"]}
    assert {q["step"][0] for q in prometheus.queries} == {"18"}, "an hour in some 200 points"


def test_every_scenario_query_is_valid_promql(tmp_path: Path) -> None:
    """Every scenario has its queries, and they (and the fallback for a scenario an instructor
    writes) pass promtool's parser as recording rules would."""
    import yaml

    from drill.scenarios import load_program

    program = load_program(REPO_ROOT / "scenarios.yaml")
    assert set(evidence.SCENARIO_METRICS) == set(program.scenarios)
    if shutil.which("promtool") is None:
        need_server("promtool", "apt-get install prometheus (Debian's package ships promtool)")
    queries = [q for qs in evidence.SCENARIO_METRICS.values() for q in qs]
    queries += evidence.red_metrics(["ledger", "chain-a", "odd.name"])
    rules = [{"record": f"evidence:query{i}", "expr": q.expr} for i, q in enumerate(queries)]
    path = tmp_path / "evidence.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "evidence", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_code_section_points_to_route_functions_and_log_calls(
    captured: Captured, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server spans' routes map to their route functions (and what those call), an access log
    line and a service's log call map too, and code.* span attributes win; paths relative to
    the repo, ranges as inspect sees them."""
    from services.chain.api import place_order
    from services.feed.api import get_feed
    from services.ledger.api import post_transaction
    from services.ledger.models import Transaction

    logs = state / "logs"
    logs.mkdir()
    trace_id = uuid.uuid4().hex
    lines = [
        {"msg": "order o-1 confirmed", "logger": "chain", "service": "chain-a"},
        {"msg": "GET /feed/{user_id} 200", "logger": "http", "service": "feed"},
    ]
    (logs / "mixed.log").write_text(
        "".join(
            json.dumps(
                {
                    "ts": "2026-01-01T00:00:00.000+00:00",
                    "level": "info",
                    "trace_id": trace_id,
                    "span_id": "1" * 16,
                    **line,
                }
            )
            + "\n"
            for line in lines
        )
    )
    with stand_in(JaegerStandIn(captured.requests)) as jaeger:
        monkeypatch.setenv(evidence.JAEGER_URL_ENV, jaeger)
        code, output = bundle_cli(
            "fp-drift", "--trace-id", captured.posting, "--trace-id", trace_id
        )
    assert code == 0, output
    text = sections(output)["Code the traces point to"]
    assert f"`{source_range(post_transaction)}`: POST /transactions of `ledger`" in text
    assert "(from spans)" in text
    assert f"calls `Transaction` at `{source_range(Transaction)}`" in text
    assert f"`{source_range(place_order)}`: log call `chain`: 'order o-1 confirmed'" in text
    assert f"`{source_range(get_feed)}`: GET /feed/{{user_id}} of `feed`" in text

    # A span that carries code attributes (a container's path) is placed by them.
    lineno = inspect.getsourcelines(get_feed)[1] + 5
    span = evidence.Span(
        service="feed",
        name="GET /feed/{user_id}",
        span_id="2" * 16,
        parent_id=None,
        start=datetime(2026, 1, 1, tzinfo=UTC),
        duration_ms=1.0,
        attributes={"code.filepath": "/app/services/feed/api.py", "code.lineno": lineno},
    )
    from drill.native import LabConfig

    section = evidence.code_section(LabConfig(REPO_ROOT, state_dir=state), [span], [])
    assert section.body[0].startswith(f"- `{source_range(get_feed)}`: `get_feed`")


# -- a native lab: real exporters, real log files, a real Prometheus --------------------------


@pytest.mark.lab
def test_a_real_order_through_a_native_chain_lab_makes_a_whole_bundle(tmp_path: Path) -> None:
    """One order through a native chain lab with the C→A callback on: the spans its services
    export (served as Jaeger's JSON) make the A→B→C→A tree, its lines come from all three log
    files, a real Prometheus scraping the chain fills the metrics, and the code section points
    at the four route functions."""
    import httpx

    from drill.solutions import copy_lab
    from services.chain.api import check_customer, place_order, quote, reserve
    from tests.labs import lab_env, run_drill
    from tests.otlp import otlp_receiver
    from tests.polling import poll_until

    if shutil.which("prometheus") is None:
        need_server("prometheus", "apt-get install prometheus")
    root = copy_lab(REPO_ROOT, tmp_path / "tree")
    out = tmp_path / "bundle.md"
    order = {"customer_id": "cust-1", "lines": [{"sku": "MUG-STONEWARE", "quantity": 1}]}
    with otlp_receiver() as receiver:
        exported: list[ExportTraceServiceRequest] = []
        receive = receiver.add

        def keep(request: ExportTraceServiceRequest) -> None:
            exported.append(request)
            receive(request)

        receiver.add = keep  # type: ignore[method-assign]  # the raw requests, for Jaeger's JSON
        env = lab_env(root)
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="200")
        offset = int(env["DRILL_PORT_OFFSET"])
        chain_a = f"http://127.0.0.1:{8011 + offset}"
        prometheus = f"http://127.0.0.1:{9090 + offset}"
        up = run_drill(root, env, "up", "--native", "--only", "chain", "--only", "prometheus")
        try:
            assert up.returncode == 0, up.stderr + up.stdout
            flip = run_drill(root, env, "flags", "set", "chain.fraud_callback", "on")
            assert flip.returncode == 0, flip.stderr

            def callback_acted() -> float:
                url = f"http://127.0.0.1:{8013 + offset}/drill/triggers"
                acted = httpx.get(url, timeout=5, trust_env=False).json()
                return float(sum(acted.get("chain.fraud_callback", {}).values()))

            def order_through_the_callback() -> str:
                before = callback_acted()
                response = httpx.post(chain_a + "/orders", json=order, timeout=10, trust_env=False)
                assert response.status_code == 201, response.text
                assert callback_acted() > before, "chain-c has not seen the callback flag yet"
                return response.headers["x-trace-id"]

            trace_id = poll_until(order_through_the_callback, "an order through C→A", 30)

            def exported_path() -> None:
                spans = receiver.spans(trace_id)
                servers = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_SERVER]
                assert len(servers) == 4 and any("/check" in s.name for s in servers), servers

            poll_until(exported_path, f"the exported server spans of {trace_id}", 60)

            def scraped() -> None:
                query = 'sum(rate(http_server_requests_total{service="chain-a"}[1m]))'
                answer = httpx.get(
                    prometheus + "/api/v1/query", params={"query": query}, trust_env=False
                ).json()
                assert answer["data"]["result"], "a rate of chain-a's requests"

            poll_until(scraped, "Prometheus scraping the chain", 60, 1.0)
            claims = [
                claim(
                    9,
                    "circular-deadlock",
                    "accepted",
                    datetime.now(UTC).isoformat(),
                    "C calls back into A while A waits on B.",
                    trace_ids=[trace_id],
                    promql="sum(chain_workers)",
                )
            ]
            with (
                stand_in(JaegerStandIn(exported)) as jaeger,
                stand_in(runner_stand_in(claims)) as scoreboard,
            ):
                sources = {
                    evidence.JAEGER_URL_ENV: jaeger,
                    evidence.SCOREBOARD_URL_ENV: scoreboard,
                    evidence.TEAM_TOKEN_ENV: TOKEN,
                }
                done = run_drill(
                    root,
                    {**env, **sources},
                    "evidence", "circular-deadlock", "--trace-id", trace_id,
                    "--since", "5m", "--out", str(out),
                )  # fmt: skip
        finally:
            run_drill(root, env, "down")
    assert done.returncode == 0, done.stderr + done.stdout
    found = sections(out.read_text())
    assert "C calls back into A while A waits on B." in found["The team's accepted claim"]

    tree = found["Traces"].split("```text\n", 1)[1].split("```", 1)[0].splitlines()

    def depth(service: str, name: str) -> int:
        line = next(t for t in tree if t.lstrip().startswith(f"{service}  {name}  "))
        return len(line) - len(line.lstrip())

    path = [
        depth("chain-a", "POST /orders"),
        depth("chain-b", "POST /quotes"),
        depth("chain-c", "POST /reservations"),
        depth("chain-a", "GET /customers/{customer_id}/check"),
    ]
    assert path[0] == 0 and path == sorted(path) and len(set(path)) == 4, tree

    logs = found["Log lines of these traces"]
    for service in ("chain-a", "chain-b", "chain-c"):
        assert f"`{service}.log`" in logs and f" {service} info " in logs
    assert "POST /orders 201" in logs

    metrics = found["Key metrics"]
    assert f"Source: Prometheus at {prometheus}" in metrics
    for service in ("chain-a", "chain-b", "chain-c"):
        assert f"| worker pool in use (busy / size) | service={service} |" in metrics, metrics
    # Three services of 8 workers each, once all three are scraped.
    own = re.search(r"^\| the accepted claim's own query \| - \| .+ \| 24 \| 24 \|$", metrics, re.M)
    assert own, metrics

    code = found["Code the traces point to"]
    for function in (place_order, quote, reserve, check_customer):
        assert f"`{source_range(function)}`" in code, code
    assert "no result.json for `circular-deadlock`" in found["The last verify run"]
