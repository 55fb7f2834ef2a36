"""Timeline traces from Jaeger's HTTP API (the compose lab's trace store), for the waterfalls.

`GET /api/traces?service=feed&start=&end=&limit=` answers `{"data": [trace, ...]}`, each trace
with `spans` (startTime and duration in microseconds, `references` to the parent) and
`processes` (the service of each span). The native lab has no Jaeger; the report says so.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import httpx

from drill import native
from drill.report.model import Span, Trace, from_epoch

PORT = 16686
TIMELINE_MARK = "/feed/"
LIMIT = 40
# The ASGI instrumentation's per-message spans: noise on a waterfall of round trips.
_ASGI_INTERNAL = (" http send", " http receive")


def jaeger_url(config: native.LabConfig) -> str:
    """DRILL_JAEGER_URL, else Jaeger's UI port in this lab (plus DRILL_PORT_OFFSET)."""
    override = os.environ.get("DRILL_JAEGER_URL")
    return override.rstrip("/") if override else f"http://{native.HOST}:{PORT + config.port_offset}"


def parse_trace(document: dict[str, Any]) -> Trace | None:
    """A Trace from one element of the API's `data`, or None when it holds no spans."""
    raw = [
        s
        for s in document.get("spans") or []
        if isinstance(s, dict) and not str(s.get("operationName", "")).endswith(_ASGI_INTERNAL)
    ]
    if not raw:
        return None
    processes = document.get("processes") or {}
    parents: dict[str, str] = {}
    for span in raw:
        for ref in span.get("references") or []:
            if ref.get("refType") == "CHILD_OF":
                parents[str(span["spanID"])] = str(ref.get("spanID"))
    ids = {str(span["spanID"]) for span in raw}

    def depth(span_id: str) -> int:
        level, seen = 0, {span_id}
        while (parent := parents.get(span_id)) in ids and parent not in seen:
            level, span_id = level + 1, str(parent)
            seen.add(span_id)
        return level

    first = min(int(span["startTime"]) for span in raw)
    spans = sorted(
        (
            Span(
                name=str(span.get("operationName", "?")),
                service=str((processes.get(span.get("processID")) or {}).get("serviceName", "?")),
                start_ms=(int(span["startTime"]) - first) / 1000,
                duration_ms=int(span.get("duration", 0)) / 1000,
                depth=depth(str(span["spanID"])),
            )
            for span in raw
        ),
        key=lambda s: (s.start_ms, s.depth),
    )
    return Trace(
        str(document.get("traceID", raw[0].get("traceID", ""))),
        from_epoch(first / 1e6),
        tuple(spans),
    )


def timeline_traces(url: str, start: datetime, end: datetime) -> tuple[list[Trace], str | None]:
    """The feed's timeline traces between start and end (most recent first), or why not."""
    params = {
        "service": "feed",
        "start": str(int(start.timestamp() * 1e6)),
        "end": str(int(end.timestamp() * 1e6)),
        "limit": str(LIMIT),
    }
    try:
        response = httpx.get(f"{url}/api/traces", params=params, timeout=10, trust_env=False)
        response.raise_for_status()
        data = response.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return [], f"Jaeger at {url} is not reachable ({type(exc).__name__})"
    traces = [t for t in map(parse_trace, data) if t is not None]
    timelines = [t for t in traces if any(TIMELINE_MARK in s.name for s in t.spans[:1])]
    return timelines, None
