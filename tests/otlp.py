"""An OTLP/HTTP trace receiver for tests: what the services export, decoded from protobuf.

It stands where Jaeger's OTLP port stands in compose (no Jaeger binary runs here): the
services' real exporters post real `ExportTraceServiceRequest`s to it over HTTP.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.servers import QuietHandler, serving


@dataclass(frozen=True)
class ExportedSpan:
    service: str  # the resource's service.name
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind


class Receiver:
    """Spans received so far, and the endpoint to set as OTEL_EXPORTER_OTLP_ENDPOINT."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._spans: list[ExportedSpan] = []
        self._lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ExportedSpan(
                            service=service,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                        )
                    )
        with self._lock:
            self._spans.extend(spans)

    def spans(self, trace_id: str) -> list[ExportedSpan]:
        with self._lock:
            return [span for span in self._spans if span.trace_id == trace_id]


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """A receiver listening on a free port of 127.0.0.1 until the block ends."""
    receivers: list[Receiver] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            receivers[0].add(request)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.reply(200, payload, "application/x-protobuf")

    with serving(Handler) as url:
        receivers.append(Receiver(url))
        yield receivers[0]
