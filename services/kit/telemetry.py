"""Tracing: one TracerProvider per app, OTLP export only when an endpoint is configured."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy.engine import Engine

from services.kit.settings import ServiceSettings

_global_set = False


def create_tracer_provider(settings: ServiceSettings) -> TracerProvider:
    """Spans are always made (trace ids reach logs and headers); exported only to OTLP."""
    global _global_set
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.otlp_endpoint:
        # Lazy: the exporter pulls in protobuf, which a lab without Jaeger never needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if not _global_set:
        # Libraries that ask the global API get the first app's provider; apps pass theirs.
        trace.set_tracer_provider(provider)
        _global_set = True
    return provider


def instrument(app: FastAPI, provider: TracerProvider, engine: Engine | None) -> None:
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls="/metrics,/healthz,/readyz",
        # One server span per request: the ASGI send/receive spans are noise in Jaeger.
        exclude_spans=["receive", "send"],
    )
    if engine is not None:
        instrumentor = SQLAlchemyInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            # A process-wide singleton: a second app's engine (tests) is added directly.
            instrumentor._instrument(engine=engine, tracer_provider=provider)  # type: ignore[no-untyped-call]
        else:
            instrumentor.instrument(engine=engine, tracer_provider=provider)
