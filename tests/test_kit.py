"""services/kit: health, metrics, trace ids, JSON logs, error mapping and body limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit.app import FlagsDep, create_service_app
from services.kit.errors import Conflict
from services.kit.settings import ServiceSettings
from tests.conftest import assert_problem

router = APIRouter()


@router.get("/items/{item_id}")
def get_item(item_id: int) -> dict[str, int]:
    if item_id == 13:
        raise Conflict("item 13 is taken")
    return {"item_id": item_id}


@router.post("/echo")
def echo(body: dict[str, str]) -> dict[str, str]:
    return body


def make_app(tmp_path: Path, exporter: InMemorySpanExporter | None = None):  # type: ignore[no-untyped-def]
    provider = TracerProvider()
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = ServiceSettings(service_name="kit-test", state_dir=tmp_path, max_body_bytes=1024)
    return create_service_app(
        settings, title="kit-test", routers=[router], tracer_provider=provider
    )


def test_health_and_readiness(tmp_path: Path) -> None:
    """/healthz and /readyz answer 200 for a running service."""
    with TestClient(make_app(tmp_path)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200


def test_red_metrics_use_the_route_template(tmp_path: Path) -> None:
    """Requests are counted by route template, method and status, not by raw path."""
    with TestClient(make_app(tmp_path)) as client:
        client.get("/items/1")
        client.get("/items/2")
        client.get("/items/13")
        client.get("/nowhere")
        text = client.get("/metrics").text
    assert (
        'http_server_requests_total{method="GET",route="/items/{item_id}",'
        'service="kit-test",status="200"} 2.0'
    ) in text
    assert 'route="/items/{item_id}",service="kit-test",status="409"' in text
    assert 'route="<unmatched>",service="kit-test",status="404"' in text
    assert 'route="/metrics"' not in text


def test_openmetrics_exemplars_carry_the_trace_id(tmp_path: Path) -> None:
    """Scraped as OpenMetrics, the latency histogram carries the request's trace id."""
    with TestClient(make_app(tmp_path)) as client:
        trace_id = client.get("/items/7").headers["x-trace-id"]
        response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert f'# {{trace_id="{trace_id}"}}' in response.text


def test_trace_id_header_matches_the_server_span(tmp_path: Path) -> None:
    """The x-trace-id header is the trace id of the exported server span."""
    exporter = InMemorySpanExporter()
    with TestClient(make_app(tmp_path, exporter)) as client:
        trace_id = client.get("/items/5").headers["x-trace-id"]
    spans = exporter.get_finished_spans()
    assert any(format(s.context.trace_id, "032x") == trace_id for s in spans)


def test_incoming_traceparent_is_continued(tmp_path: Path) -> None:
    """A W3C traceparent from the caller becomes the trace of this request."""
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with TestClient(make_app(tmp_path)) as client:
        response = client.get("/items/5", headers={"traceparent": parent})
    assert response.headers["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"


def test_logs_are_json_lines_with_trace_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each request logs one JSON line with ts, level, service, trace_id, span_id and msg."""
    with TestClient(make_app(tmp_path)) as client:
        trace_id = client.get("/items/9").headers["x-trace-id"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    request_lines = [line for line in lines if line["trace_id"] == trace_id]
    assert len(request_lines) == 1
    entry = request_lines[0]
    assert {"ts", "level", "service", "trace_id", "span_id", "msg"} <= set(entry)
    assert entry["service"] == "kit-test"
    assert entry["msg"] == "GET /items/{item_id} 200"


def test_domain_errors_map_to_http(tmp_path: Path) -> None:
    """A DomainError raised in a route becomes its status code and RFC 9457 problem details."""
    with TestClient(make_app(tmp_path)) as client:
        response = client.get("/items/13")
    assert_problem(response, 409, "urn:drill:problem:conflict", "Conflict", "item 13 is taken")


def test_framework_errors_are_problem_details_too(tmp_path: Path) -> None:
    """Validation errors name each field; unknown routes and methods answer the same shape."""
    with TestClient(make_app(tmp_path)) as client:
        invalid = client.get("/items/abc")
        unknown = client.get("/nowhere")
        wrong_method = client.delete("/items/1")
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    body = invalid.json()
    assert (body["type"], body["title"], body["status"]) == ("about:blank", "Invalid request", 422)
    assert body["errors"] == [{"pointer": "/item_id", "detail": body["errors"][0]["detail"]}]
    assert "valid integer" in body["detail"]
    for response, status in ((unknown, 404), (wrong_method, 405)):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status


def test_openapi_documents_problem_details_not_fastapis_validation_error(tmp_path: Path) -> None:
    """Every error status in the OpenAPI is application/problem+json with the Problem schema."""
    schema = make_app(tmp_path).openapi()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["Problem"]["required"]) == {
        "title",
        "status",
        "detail",
    }
    errors = [
        response
        for item in schema["paths"].values()
        for operation in item.values()
        for status, response in operation["responses"].items()
        if int(status) >= 400
    ]
    assert errors
    for response in errors:
        assert response["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }


def test_oversize_body_is_refused_and_service_keeps_serving(tmp_path: Path) -> None:
    """A body over the limit gets 413, and the next request is served normally."""
    with TestClient(make_app(tmp_path)) as client:
        response = client.post("/echo", content=json.dumps({"a": "x" * 5000}))
        assert response.status_code == 413
        assert "over 1024 bytes" in response.json()["detail"]
        assert client.post("/echo", json={"a": "b"}).json() == {"a": "b"}


def test_a_second_app_does_not_register_metrics_again(tmp_path: Path) -> None:
    """Building two apps in one process works: metrics are registered once."""
    make_app(tmp_path)
    make_app(tmp_path)


@router.get("/converted")
def converted(flags: FlagsDep) -> dict[str, bool]:
    return {"converted": flags.enabled("ledger.fx_conversion")}


def test_triggers_that_acted_are_evidence_for_verify_and_stay_off_metrics(tmp_path: Path) -> None:
    """/drill/triggers counts a trigger's path per variant; /metrics never names a trigger."""
    with TestClient(make_app(tmp_path)) as client:
        flags = client.app.state.flags  # type: ignore[attr-defined]
        assert client.get("/drill/triggers").json() == {}
        with flags.override({"ledger.fx_conversion": True}):
            for _ in range(3):
                assert client.get("/converted").json() == {"converted": True}
        assert client.get("/converted").json() == {"converted": False}
        assert client.get("/drill/triggers").json() == {"ledger.fx_conversion": {"on": 3}}
        assert "fx_conversion" not in client.get("/metrics").text
        assert "/drill/triggers" not in client.get("/openapi.json").text
