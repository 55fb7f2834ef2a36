"""drill evidence: the Markdown bundle a team hands its AI assistant in phase 3.

Seven sections, in this order: the scenario's symptom, the team's accepted claim (the runner's
API), the traces' spans as a tree (Jaeger), the scenario's key metrics over a window
(Prometheus), the traces' log lines (the native lab's log files), the last verify result, and
the code the traces point to. Each section names its source, or says why it is empty: a
source that cannot be reached never stops the others.

Spans reach the tree as a neutral list (`Span`); `spans_from_jaeger` adapts Jaeger's query API
JSON (`GET /api/traces/{id}`) and `spans_from_otlp_json` its OTLP-native `/api/v3/traces/{id}`.
The compose lab runs Jaeger v2 (jaeger/config.yaml), which serves both endpoints; Jaeger v1's
query service answered `/api/traces/{id}` in the same shape.
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import math
import os
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from drill import native
from drill.prometheus import RUNNER_PORT
from drill.scenarios import Program, ScenarioFileError, load_program, parse_duration

__all__ = [
    "Bundle",
    "EvidenceError",
    "MetricQuery",
    "Section",
    "Span",
    "collect",
    "jaeger_url",
    "prometheus_url",
    "scoreboard_url",
    "span_tree",
    "spans_from_jaeger",
    "spans_from_otlp_json",
    "write_bundle",
]

JAEGER_PORT = 16686
SCOREBOARD_URL_ENV = "DRILL_SCOREBOARD_URL"
TEAM_TOKEN_ENV = "DRILL_TEAM_TOKEN"
JAEGER_URL_ENV = "DRILL_JAEGER_URL"
PROMETHEUS_URL_ENV = "DRILL_PROMETHEUS_URL"
DEFAULT_SINCE = "15m"
DEFAULT_LOG_LINES = 40
# The queries take rates over 1 m: a shorter window holds no complete rate.
MIN_WINDOW_S = 60.0
# A feed read of a heavy follower is a thousand spans; the assistant needs its shape, not each.
MAX_TREE_LINES = 400
STATEMENT_CHARS = 240
# Calls listed under a route function: where its work goes next, not a call graph.
MAX_CALLEES = 8
TRACEBACK_LINES = 12
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_TIMEOUT = httpx.Timeout(10.0, connect=2.0)


# Labels Prometheus adds to every scraped series: they name the scrape, not the symptom.
SCRAPE_LABELS = frozenset({"__name__", "instance", "job"})


class EvidenceError(Exception):
    """Bad input (exit 2, nothing written); the message says what was expected."""


class SourceUnavailable(Exception):
    """A source could not be asked or did not answer usably; the message says which and why."""


# -- the request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceRequest:
    """What the bundle is about: one scenario, its traces, and the metrics window."""

    scenario: str
    trace_ids: tuple[str, ...]
    since_s: float
    since_text: str
    log_lines: int
    now: datetime

    @property
    def start(self) -> datetime:
        return self.now - timedelta(seconds=self.since_s)


def parse_trace_ids(values: Sequence[str]) -> tuple[str, ...]:
    """Lower-case, de-duplicated trace ids; each must be 32 hex digits and not all zero."""
    ids: list[str] = []
    for value in values:
        trace_id = value.strip().lower()
        if not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
            raise EvidenceError(
                f"--trace-id {value!r} is not a trace id: expected 32 hex digits (not all zero), "
                "as in a response's x-trace-id header or a log line's trace_id"
            )
        if trace_id not in ids:
            ids.append(trace_id)
    if not ids:
        raise EvidenceError("give at least one --trace-id")
    return tuple(ids)


def parse_since(text: str) -> float:
    """Seconds of the metrics window, from 15m, 90s or 1h; at least a minute."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise EvidenceError(f"--since {text!r}: {exc}") from None
    if seconds < MIN_WINDOW_S:
        raise EvidenceError(
            f"--since {text!r} is shorter than a minute: the metrics are rates over 1 m; "
            "give e.g. 5m or 15m"
        )
    return seconds


# -- where the sources are --------------------------------------------------------------------


def _env_url(name: str) -> str | None:
    value = os.environ.get(name, "").strip().rstrip("/")
    return value or None


def scoreboard_url(config: native.LabConfig) -> str:
    """The runner's API: DRILL_SCOREBOARD_URL, else its port in this lab."""
    default = f"http://{native.HOST}:{RUNNER_PORT + config.port_offset}"
    return _env_url(SCOREBOARD_URL_ENV) or default


def jaeger_url(config: native.LabConfig) -> str:
    """Jaeger's query API: DRILL_JAEGER_URL, else its UI port (16686, shifted like every port)."""
    return _env_url(JAEGER_URL_ENV) or f"http://{native.HOST}:{JAEGER_PORT + config.port_offset}"


def prometheus_url(config: native.LabConfig) -> str:
    """Prometheus: DRILL_PROMETHEUS_URL, else its port in this lab (native and compose alike)."""
    return _env_url(PROMETHEUS_URL_ENV) or config.url(native.PROMETHEUS)


def _unreachable(what: str, url: str, exc: httpx.HTTPError) -> SourceUnavailable:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return SourceUnavailable(f"{what} not reachable at {url} ({detail})")


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise SourceUnavailable(
            f"{what} answered HTTP {response.status_code} with a body that is not JSON: "
            f"{response.text[:200]!r}"
        ) from None


# -- the bundle -------------------------------------------------------------------------------


@dataclass
class Section:
    """One section of the bundle: its title, where its content came from (or why there is
    none), and its Markdown lines."""

    title: str
    source: str
    body: list[str] = field(default_factory=list)
    reached: bool = True

    def markdown(self, number: int) -> str:
        lines = [f"## {number}. {self.title}", "", f"Source: {self.source}", ""]
        body = list(self.body)
        while body and not body[-1]:
            body.pop()
        if body:
            lines += [*body, ""]
        return "\n".join(lines)


@dataclass
class Bundle:
    """Every section, in order, plus what the bundle is about."""

    request: EvidenceRequest
    title: str
    sections: list[Section]

    def markdown(self) -> str:
        request = self.request
        header = [
            f"# Evidence bundle: {request.scenario} ({self.title})",
            "",
            f"- written: {request.now.isoformat(timespec='seconds')}",
            f"- traces: {', '.join(f'`{t}`' for t in request.trace_ids)}",
            f"- metrics window: the last {request.since_text} "
            f"({request.start.isoformat(timespec='seconds')} to "
            f"{request.now.isoformat(timespec='seconds')})",
            "",
            "Gathered by `drill evidence` from the lab's own telemetry and files. Each section "
            "names its source, or says why it is empty.",
            "",
        ]
        body = [section.markdown(n) for n, section in enumerate(self.sections, start=1)]
        return "\n".join(header) + "\n" + "\n".join(body)

    def summary(self) -> list[str]:
        """One line per section: reached or not, and its source."""
        return [
            f"{'ok ' if s.reached else 'no '} {n}. {s.title}: {s.source}"
            for n, s in enumerate(self.sections, start=1)
        ]


def write_bundle(path: Path, text: str) -> None:
    """Write the bundle atomically: a reader never sees half of it."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    # mkstemp makes it private (0600); the bundle is an ordinary file, shared as the user's are.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def collect(
    config: native.LabConfig,
    scenario: str,
    trace_ids: Sequence[str],
    *,
    since: str = DEFAULT_SINCE,
    log_lines: int = DEFAULT_LOG_LINES,
    now: datetime | None = None,
    client: httpx.Client | None = None,
) -> Bundle:
    """The bundle for a scenario and its traces. Raises EvidenceError (or ScenarioFileError)
    on bad input before any source is asked."""
    program = load_program(config.root / "scenarios.yaml")
    try:
        chosen = program.scenario(scenario)
    except ScenarioFileError as exc:
        raise EvidenceError(str(exc)) from None
    if log_lines < 1:
        raise EvidenceError("--log-lines must be at least 1")
    request = EvidenceRequest(
        scenario=scenario,
        trace_ids=parse_trace_ids(trace_ids),
        since_s=parse_since(since),
        since_text=since.strip(),
        log_lines=log_lines,
        now=now or datetime.now(UTC),
    )
    own_client = client is None
    http = client or httpx.Client(timeout=_TIMEOUT, trust_env=False)
    try:
        claim = claim_section(http, config, request)
        traces, spans = trace_section(http, config, request)
        metrics = metrics_section(http, config, request, program, claim_query(claim))
        logs, lines = log_section(config, request)
        sections = [
            symptom_section(config, program, scenario),
            claim.section,
            traces,
            metrics,
            logs,
            verify_section(config, scenario),
            code_section(config, spans, lines),
        ]
    finally:
        if own_client:
            http.close()
    return Bundle(request, chosen.title, sections)


# -- 1. the symptom ---------------------------------------------------------------------------


def symptom_section(config: native.LabConfig, program: Program, name: str) -> Section:
    scenario = program.scenario(name)
    body = [
        f"**{scenario.title}** (`{name}`)",
        "",
        f"Services: {', '.join(f'`{s}`' for s in scenario.services)}",
        "",
        f"> {' '.join(scenario.summary.split())}",
    ]
    return Section("Symptom", f"`{_relative(config.root / 'scenarios.yaml', config.root)}`", body)


# -- 2. the team's accepted claim -------------------------------------------------------------


@dataclass
class ClaimResult:
    section: Section
    claim: Mapping[str, Any] | None = None


def claim_query(result: ClaimResult) -> str | None:
    """The accepted claim's PromQL, if it gave one."""
    return _claim_promql(result.claim) if result.claim else None


def _claim_promql(claim: Mapping[str, Any]) -> str | None:
    promql = claim.get("promql")
    return promql.strip() if isinstance(promql, str) and promql.strip() else None


def claim_section(
    http: httpx.Client, config: native.LabConfig, request: EvidenceRequest
) -> ClaimResult:
    """The newest accepted claim of this team for the scenario, from the runner's `/claims`."""
    title = "The team's accepted claim"
    url = scoreboard_url(config)
    token = os.environ.get(TEAM_TOKEN_ENV, "").strip()
    if not token:
        return ClaimResult(
            Section(
                title,
                f"not fetched: {TEAM_TOKEN_ENV} is unset, so the runner API at {url} was not "
                "asked (set it to the team token the instructor handed out)",
                reached=False,
            )
        )
    try:
        claims = fetch_claims(http, url, token)
    except SourceUnavailable as exc:
        return ClaimResult(Section(title, str(exc), reached=False))
    source = f"runner API `GET {url}/claims` (this team's claims)"
    mine = [c for c in claims if c.get("scenario") == request.scenario]
    accepted = [c for c in mine if c.get("status") == "accepted"]
    if not accepted:
        counts = _status_counts(mine)
        return ClaimResult(
            Section(
                title,
                source,
                [
                    f"No accepted claim for `{request.scenario}` yet"
                    + (f" ({counts})." if counts else ": the team has filed none for it.")
                ],
            )
        )
    claim = max(accepted, key=_claim_order)
    return ClaimResult(Section(title, source, _claim_lines(claim, request)), claim)


def fetch_claims(http: httpx.Client, url: str, token: str) -> list[Mapping[str, Any]]:
    """The team's claims as the runner lists them; SourceUnavailable with the reason if not."""
    try:
        response = http.get(f"{url}/claims", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise _unreachable("runner API", url, exc) from None
    if response.status_code in (401, 403):
        raise SourceUnavailable(
            f"the runner API at {url} refused the team token (HTTP {response.status_code}); "
            f"check {TEAM_TOKEN_ENV}"
        )
    if response.status_code == 404:
        raise SourceUnavailable(
            f"the runner API at {url} has no /claims (HTTP 404): is the program runner "
            "(`drill program start`) this version?"
        )
    if response.status_code != 200:
        raise SourceUnavailable(
            f"the runner API at {url} answered /claims with HTTP {response.status_code}"
        )
    body = _json(response, "the runner API")
    claims = body.get("claims") if isinstance(body, dict) else None
    if not isinstance(claims, list):
        raise SourceUnavailable(f"the runner API at {url} answered /claims without a claims list")
    return [c for c in claims if isinstance(c, dict)]


def _status_counts(claims: Iterable[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for claim in claims:
        counts[str(claim.get("status"))] += 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _claim_order(claim: Mapping[str, Any]) -> tuple[datetime, int]:
    filed = _parse_time(claim.get("filed_at")) or datetime.min.replace(tzinfo=UTC)
    ident = claim.get("id")
    return filed, ident if isinstance(ident, int) else -1


def _claim_lines(claim: Mapping[str, Any], request: EvidenceRequest) -> list[str]:
    lines = [
        f"Claim #{claim.get('id')} by team `{claim.get('team')}`, filed {claim.get('filed_at')}, "
        f"accepted {claim.get('judged_at') or '(time not given)'}.",
        "",
        *(f"> {line}" if line else ">" for line in str(claim.get("text", "")).splitlines()),
    ]
    if claim.get("note"):
        lines += ["", f"Instructor's note: {claim['note']}"]
    cited = [str(t) for t in claim.get("trace_ids") or []]
    if cited:
        lines += ["", f"Trace ids it cites: {', '.join(f'`{t}`' for t in cited)}"]
        missing = [t for t in cited if t.lower() not in request.trace_ids]
        if missing:
            lines.append(
                f"(not in this bundle: {', '.join(f'`{t}`' for t in missing)}; pass them with "
                "--trace-id to include their spans and logs)"
            )
    promql = _claim_promql(claim)
    if promql:
        lines += ["", "Its query (evaluated under Metrics):", "", "```promql", promql, "```"]
    return lines


# -- 3. traces --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One span, whatever store it came from."""

    service: str
    name: str
    span_id: str
    parent_id: str | None
    start: datetime
    duration_ms: float
    attributes: Mapping[str, Any]
    status: str = "unset"  # ok, error or unset (OpenTelemetry's status codes)
    status_message: str | None = None
    trace_id: str = ""


def _micros(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _epoch(micros: float) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


def spans_from_jaeger(document: Any) -> list[Span]:
    """Spans of Jaeger's query API answer (`{"data": [trace, ...], "errors": ...}`).

    Jaeger's model of an OTLP span: the parent is a CHILD_OF reference; the kind, status and
    scope are tags (`span.kind`, `otel.status_code`, `otel.status_description`, `error`); the
    service is the span's process; events are logs.
    """
    data = document.get("data") if isinstance(document, dict) else None
    traces = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
    spans: list[Span] = []
    for trace in traces:
        processes = trace.get("processes") or {}
        for raw in trace.get("spans") or []:
            process = processes.get(raw.get("processID")) or raw.get("process") or {}
            tags = {t.get("key"): t.get("value") for t in raw.get("tags") or [] if "key" in t}
            status, message = _jaeger_status(tags, raw.get("logs") or [])
            spans.append(
                Span(
                    service=str(process.get("serviceName", "?")),
                    name=str(raw.get("operationName", "")),
                    span_id=str(raw.get("spanID", "")),
                    parent_id=_jaeger_parent(raw),
                    start=_epoch(_micros(raw.get("startTime"))),
                    duration_ms=_micros(raw.get("duration")) / 1000,
                    attributes=tags,
                    status=status,
                    status_message=message,
                    trace_id=str(raw.get("traceID", trace.get("traceID", ""))),
                )
            )
    return spans


def _jaeger_parent(raw: Mapping[str, Any]) -> str | None:
    references = [r for r in raw.get("references") or [] if isinstance(r, dict)]
    same_trace = [r for r in references if r.get("traceID") in (None, raw.get("traceID"))]
    for reference in same_trace:
        if reference.get("refType") == "CHILD_OF":
            return str(reference.get("spanID"))
    # Jaeger's UI takes the first reference as the parent when none is CHILD_OF.
    return str(same_trace[0].get("spanID")) if same_trace else None


def _jaeger_status(tags: Mapping[str, Any], logs: Sequence[Any]) -> tuple[str, str | None]:
    code = str(tags.get("otel.status_code", "")).upper()
    error = tags.get("error") in (True, "true")
    message = tags.get("otel.status_description")
    if (error or code == "ERROR") and not message:
        message = _exception_message(
            {f.get("key"): f.get("value") for f in log.get("fields") or []}
            for log in logs
            if isinstance(log, dict)
        )
    status = "error" if error or code == "ERROR" else "ok" if code == "OK" else "unset"
    return status, str(message) if message else None


def _exception_message(events: Iterable[Mapping[str, Any]]) -> str | None:
    for fields in events:
        if fields.get("event") == "exception" or "exception.type" in fields:
            kind, text = fields.get("exception.type"), fields.get("exception.message")
            return f"{kind}: {text}" if kind and text else str(kind or text or "exception")
    return None


def _otlp_id(value: Any, size: int) -> str:
    """A trace or span id from OTLP JSON: hex (the OTLP/JSON spec), or base64 (protobuf's
    generic JSON mapping, which older Jaeger releases answered with)."""
    text = str(value or "")
    if len(text) == size * 2 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text
    return raw.hex() if len(raw) == size else text


def _otlp_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values") or []]
    return json.dumps(value)


def _otlp_attributes(items: Any) -> dict[str, Any]:
    return {
        str(a.get("key")): _otlp_value(a.get("value")) for a in items or [] if isinstance(a, dict)
    }


_OTLP_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_OTLP_STATUS = {0: "unset", 1: "ok", 2: "error"}


def _otlp_enum(value: Any, names: Mapping[int, str], prefix: str) -> str | None:
    if isinstance(value, int):
        return names.get(value)
    text = str(value or "")
    return text.removeprefix(prefix).lower() or None


def spans_from_otlp_json(document: Any) -> list[Span]:
    """Spans of Jaeger's OTLP-native answer (`GET /api/v3/traces/{id}`): OTLP/JSON
    `TracesData`, wrapped in `{"result": ...}` by current releases."""
    data = document.get("result", document) if isinstance(document, dict) else {}
    spans: list[Span] = []
    for resource_spans in data.get("resourceSpans") or []:
        resource = _otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", "?"))
        scopes = resource_spans.get("scopeSpans") or resource_spans.get(
            "instrumentationLibrarySpans", []
        )
        for scope in scopes:
            for raw in scope.get("spans") or []:
                attributes = _otlp_attributes(raw.get("attributes"))
                kind = _otlp_enum(raw.get("kind"), _OTLP_KINDS, "SPAN_KIND_")
                if kind and kind != "unspecified":
                    attributes.setdefault("span.kind", kind)
                status_raw = raw.get("status") or {}
                status = _otlp_enum(status_raw.get("code", 0), _OTLP_STATUS, "STATUS_CODE_")
                message = status_raw.get("message") or None
                if status == "error" and not message:
                    message = _exception_message(
                        {"event": e.get("name"), **_otlp_attributes(e.get("attributes"))}
                        for e in raw.get("events") or []
                    )
                start = int(raw.get("startTimeUnixNano") or 0)
                end = int(raw.get("endTimeUnixNano") or start)
                parent = _otlp_id(raw.get("parentSpanId"), 8)
                spans.append(
                    Span(
                        service=service,
                        name=str(raw.get("name", "")),
                        span_id=_otlp_id(raw.get("spanId"), 8),
                        parent_id=parent or None,
                        start=_epoch(start / 1000),
                        duration_ms=(end - start) / 1_000_000,
                        attributes=attributes,
                        status=status or "unset",
                        status_message=message,
                        trace_id=_otlp_id(raw.get("traceId"), 16),
                    )
                )
    return spans


def fetch_trace(http: httpx.Client, url: str, trace_id: str) -> tuple[list[Span], str]:
    """A trace's spans from Jaeger and the endpoint that gave them; [] when Jaeger does not have
    it. The legacy JSON API first (Jaeger v1 and v2 alike); the OTLP-native v3 API when the
    legacy one is gone."""
    legacy = f"{url}/api/traces/{trace_id}"
    try:
        response = http.get(legacy)
    except httpx.HTTPError as exc:
        raise _unreachable("Jaeger", url, exc) from None
    body: Any = None
    if response.headers.get("content-type", "").startswith("application/json"):
        body = _json(response, "Jaeger")
    if response.status_code == 200 and isinstance(body, dict):
        return spans_from_jaeger(body), legacy
    if response.status_code == 404 and isinstance(body, dict) and body.get("errors"):
        return [], legacy  # the legacy API's own "trace not found"
    v3 = f"{url}/api/v3/traces/{trace_id}"
    try:
        answer = http.get(v3)
    except httpx.HTTPError as exc:
        raise _unreachable("Jaeger", url, exc) from None
    if answer.status_code == 404:
        return [], v3
    if answer.status_code != 200:
        raise SourceUnavailable(
            f"Jaeger at {url} answered {legacy} with HTTP {response.status_code} and {v3} with "
            f"HTTP {answer.status_code}: is that Jaeger's query port?"
        )
    return spans_from_otlp_json(_json(answer, "Jaeger")), v3


def trace_section(
    http: httpx.Client, config: native.LabConfig, request: EvidenceRequest
) -> tuple[Section, list[Span]]:
    url = jaeger_url(config)
    title = "Traces"
    body: list[str] = []
    every: list[Span] = []
    used: set[str] = set()
    for trace_id in request.trace_ids:
        try:
            spans, endpoint = fetch_trace(http, url, trace_id)
        except SourceUnavailable as exc:
            if not used:  # the first ask failed: no Jaeger there
                source = (
                    f"{exc}. The native lab runs no Jaeger (only the compose lab does; or set "
                    f"{JAEGER_URL_ENV}); the log lines and code below still hold each trace's "
                    "path"
                )
                return Section(title, source, reached=False), []
            body += [f"### Trace `{trace_id}`", "", f"Not fetched: {exc}.", ""]
            continue
        used.add(endpoint.rsplit("/", 1)[0] + "/{traceID}")
        body += [f"### Trace `{trace_id}`", ""]
        if not spans:
            body += [
                "Jaeger does not have this trace. Its in-memory store keeps only the newest "
                "traces (compose.yaml: MEMORY_MAX_TRACES), and spans arrive a few seconds "
                "after the request: fetch the bundle soon after you find the trace id.",
                "",
            ]
            continue
        every += spans
        body += [*_trace_summary(spans), "", "```text", *span_tree(spans), "```", ""]
    source = f"Jaeger query API, `GET {'`, `GET '.join(sorted(used))}`"
    return Section(title, source, body), every


def _trace_summary(spans: Sequence[Span]) -> list[str]:
    services = sorted({s.service for s in spans})
    errors = [s for s in spans if s.status == "error"]
    first = min(s.start for s in spans)
    last = max(s.start + timedelta(milliseconds=s.duration_ms) for s in spans)
    wall = (last - first).total_seconds() * 1000
    return [
        f"{_count(len(spans), 'span')} across {', '.join(f'`{s}`' for s in services)}, "
        f"{_ms(wall)} from first start to last end, {len(errors)} with an error status. "
        "Each line: service, operation, duration, start offset from the trace's first span, "
        "status (when set), notable attributes; children indented under their parent, by "
        "start time; a run of siblings that did the same work is one line with ×N.",
    ]


NOTABLE = (
    "http.route",
    "http.method",
    "http.request.method",
    "http.status_code",
    "http.response.status_code",
    "http.url",
    "url.full",
    "db.system",
    "db.statement",
    "db.query.text",
    "error.type",
    "exception.type",
    "code.function",
    "code.function.name",
)


def _notable(span: Span) -> list[str]:
    attributes = span.attributes
    parts: list[str] = []
    method = attributes.get("http.method") or attributes.get("http.request.method")
    for key in NOTABLE:
        value = attributes.get(key)
        if value is None or value == "":
            continue
        # The method is already in a server span's name; its own URL says nothing a route
        # does not (a client span's URL says whom it called).
        if key in ("http.method", "http.request.method") and str(method) in span.name:
            continue
        if key in ("http.url", "url.full") and attributes.get("span.kind") == "server":
            continue
        if key in ("db.statement", "db.query.text"):
            value = _statement(str(value))
        parts.append(f"{key}={value}")
    # Reveal mode's names for the triggers and decoys that shaped the span: the lab's own data.
    parts += [f"{k}={v}" for k, v in sorted(attributes.items()) if str(k).startswith("drill.")]
    return parts


_COLUMN_LIST = re.compile(r"^(SELECT|INSERT INTO \S+) \(?(.+?)\)? (FROM|VALUES) ", re.IGNORECASE)


def _statement(text: str) -> str:
    """A statement on one line, its column list folded: the WHERE clause is what tells."""
    text = " ".join(text.split())
    match = _COLUMN_LIST.match(text)
    if match and len(match.group(2)) > 40:
        columns = match.group(2).split(", ")
        opener = match.group(1) + (" (" if match.group(1).upper() != "SELECT" else " ")
        closer = ")" if match.group(1).upper() != "SELECT" else ""
        folded = f"{opener}{columns[0]}, … ({len(columns)} columns){closer} {match.group(3)} "
        text = folded + text[match.end() :]
    return _truncate(text, STATEMENT_CHARS)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _status(span: Span) -> str:
    # Most spans leave their status unset; only an error (or an explicit ok) says something.
    if span.status == "error":
        return "ERROR" + (f" ({span.status_message})" if span.status_message else "")
    return "ok" if span.status == "ok" else ""


def _signature(span: Span, children: Mapping[str, list[Span]]) -> tuple[Any, ...]:
    """Spans that did the same work (same service, operation, statement, status and subtree)
    share a signature: a run of them is one line with a count (a repeated call shows as ×N)."""
    attributes = span.attributes
    statement = attributes.get("db.statement") or attributes.get("db.query.text")
    route = attributes.get("http.route")
    kids = tuple(_signature(c, children) for c in children.get(span.span_id, []))
    return (span.service, span.name, statement, route, span.status, kids)


def span_tree(spans: Sequence[Span]) -> list[str]:
    """The spans as an indented tree: parent then children by start time; runs of siblings
    that did the same work folded into one line with ×N."""
    if not spans:
        return []
    known = {s.span_id for s in spans}
    children: dict[str, list[Span]] = defaultdict(list)
    roots: list[Span] = []
    for span in spans:
        if span.parent_id and span.parent_id in known and span.parent_id != span.span_id:
            children[span.parent_id].append(span)
        else:
            roots.append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: s.start)
    roots.sort(key=lambda s: s.start)
    origin = min(s.start for s in spans)
    lines: list[str] = []
    cut = 0

    def line(span: Span, depth: int, run: Sequence[Span]) -> str:
        offset = (span.start - origin).total_seconds() * 1000
        text = f"{'  ' * depth}{span.service}  {span.name}  {_ms(span.duration_ms)}"
        if len(run) > 1:
            durations = [s.duration_ms for s in run]
            text += (
                f" ×{len(run)} (total {_ms(sum(durations))}, "
                f"{_ms(min(durations))}-{_ms(max(durations))} each)"
            )
        text += f"  +{offset:,.1f} ms"
        status = _status(span)
        if status:
            text += f"  {status}"
        if span.parent_id and span.parent_id not in known and depth == 0:
            text += f"  (parent {span.parent_id} not in the trace)"
        notable = _notable(span)
        if notable:
            text += "  " + " ".join(notable) + (" (first of the run)" if len(run) > 1 else "")
        return text.replace("```", "'''")

    def walk(siblings: Sequence[Span], depth: int) -> None:
        nonlocal cut
        index = 0
        while index < len(siblings):
            span = siblings[index]
            signature = _signature(span, children)
            end = index + 1
            while end < len(siblings) and _signature(siblings[end], children) == signature:
                end += 1
            run = siblings[index:end]
            if len(lines) >= MAX_TREE_LINES:
                cut += sum(1 + _descendants(s, children) for s in run)
            else:
                lines.append(line(span, depth, run))
                walk(children.get(span.span_id, []), depth + 1)
            index = end

    walk(roots, 0)
    if cut:
        lines.append(f"… {cut:,} more spans not shown (the tree stops at {MAX_TREE_LINES} lines)")
    return lines


def _descendants(span: Span, children: Mapping[str, list[Span]]) -> int:
    return sum(1 + _descendants(c, children) for c in children.get(span.span_id, []))


# -- 4. metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricQuery:
    """A PromQL query that shows a symptom, how to label it, and how to show its values."""

    title: str
    expr: str
    unit: str = ""
    scale: float = 1.0


def _p(q: float, buckets: str, selector: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({buckets}{{{selector}}}[1m])))"


_LATENCY = "http_server_request_duration_seconds_bucket"
_PER_REQUEST = (
    'sum by (route) (rate({m}_sum{{service="feed"}}[1m])) '
    '/ (sum by (route) (rate({m}_count{{service="feed"}}[1m])) > 0)'
)
# Per scenario, the few series its dashboard and alerts watch (grafana/dashboards/,
# prometheus/rules/), written out rather than as recording rules: a fresh Prometheus has no
# recorded history, and the window may reach back before the rules first ran.
SCENARIO_METRICS: dict[str, tuple[MetricQuery, ...]] = {
    "fp-drift": (
        MetricQuery(
            "largest gap, served balance vs recount", "max(abs(ledger_reconciliation_difference))"
        ),
        MetricQuery(
            "accounts off the recount",
            "count(ledger_reconciliation_difference != 0) "
            "or on() (count(ledger_reconciliation_difference) * 0)",
        ),
        MetricQuery("extra postings with a reused request key", "max(ledger_duplicate_postings)"),
        MetricQuery("request keys posted more than once", "max(ledger_idempotency_keys_reused)"),
        MetricQuery(
            "postings per second, by currency",
            "sum by (currency) (rate(ledger_postings_total[1m]))",
            "/s",
        ),
        MetricQuery(
            "POST /transactions latency p95",
            _p(0.95, _LATENCY, 'service="ledger", route="/transactions", method="POST"'),
            "ms",
            1000,
        ),
        MetricQuery(
            "ledger 5xx answers per second",
            'sum(rate(http_server_requests_total{service="ledger", status=~"5.."}[1m]))',
            "/s",
        ),
    ),
    "circular-deadlock": (
        MetricQuery(
            "orders completed per second",
            'sum(rate(http_server_requests_total{service="chain-a", route="/orders", '
            'status=~"2.."}[1m]))',
            "/s",
        ),
        MetricQuery(
            "orders waiting for an answer", 'sum(http_server_requests_in_flight{service="chain-a"})'
        ),
        MetricQuery("worker pool in use (busy / size)", "chain_workers_busy / chain_workers"),
        MetricQuery(
            "calls waiting on each peer",
            'sum by (service, peer) (http_client_requests_in_flight{service=~"chain-.*"})',
        ),
        MetricQuery(
            "failed calls per second, by peer",
            'sum by (service, peer) (rate(http_client_requests_total{service=~"chain-.*", '
            'status=~"5..|429|timeout|error"}[1m]))',
            "/s",
        ),
        MetricQuery(
            "order latency p99",
            _p(0.99, _LATENCY, 'service="chain-a", route="/orders"'),
            "ms",
            1000,
        ),
    ),
    "n-plus-one": (
        MetricQuery(
            "timeline latency p95",
            _p(0.95, _LATENCY, 'service="feed", route="/feed/{user_id}"'),
            "ms",
            1000,
        ),
        MetricQuery(
            "database statements per request (mean)",
            _PER_REQUEST.format(m="db_queries_per_request"),
        ),
        MetricQuery(
            "outgoing calls per request (mean)",
            _PER_REQUEST.format(m="http_client_calls_per_request"),
        ),
        MetricQuery(
            "event loop lag p99",
            _p(0.99, "event_loop_lag_seconds_bucket", 'service=~"feed|profiles"', "service"),
            "ms",
            1000,
        ),
        MetricQuery(
            "calls to profiles p95",
            _p(
                0.95,
                "http_client_request_duration_seconds_bucket",
                'service="feed", peer="profiles"',
            ),
            "ms",
            1000,
        ),
        MetricQuery(
            "timeline reads per second, by status",
            'sum by (status) (rate(http_server_requests_total{service="feed", '
            'route="/feed/{user_id}"}[1m]))',
            "/s",
        ),
    ),
}


def scenario_metrics(program: Program, name: str) -> tuple[MetricQuery, ...]:
    """The scenario's queries; a scenario an instructor wrote gets its services' RED."""
    if name in SCENARIO_METRICS:
        return SCENARIO_METRICS[name]
    return red_metrics(program.scenario(name).services)


def _promql_literal(text: str) -> str:
    """text as a literal inside a PromQL regex in a double-quoted string. Not re.escape: it
    escapes `-` too, and `\\-` is no escape sequence PromQL's strings know."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\\\1", text).replace('"', '\\"')


def red_metrics(services: Sequence[str]) -> tuple[MetricQuery, ...]:
    """Rate, errors and p95 latency of these services, one series each."""
    selector = f'service=~"{"|".join(_promql_literal(s) for s in services)}"'
    return (
        MetricQuery(
            "requests per second",
            f"sum by (service) (rate(http_server_requests_total{{{selector}}}[1m]))",
            "/s",
        ),
        MetricQuery(
            "5xx answers per second",
            f'sum by (service) (rate(http_server_requests_total{{{selector}, status=~"5.."}}[1m]))',
            "/s",
        ),
        MetricQuery("latency p95", _p(0.95, _LATENCY, selector, "service"), "ms", 1000),
    )


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    values: tuple[float, ...]


def range_query_params(query: str, start: datetime, end: datetime, step: float) -> dict[str, str]:
    """The parameters of a Prometheus /api/v1/query_range request: the window in epoch
    seconds, the step in seconds."""
    return {
        "query": query,
        "start": f"{start.timestamp():.3f}",
        "end": f"{end.timestamp():.3f}",
        "step": f"{step:g}",
    }


class Prometheus:
    """Range queries against Prometheus's HTTP API."""

    def __init__(self, http: httpx.Client, url: str) -> None:
        self.http = http
        self.url = url

    def ready(self) -> None:
        try:
            response = self.http.get(f"{self.url}/-/ready")
        except httpx.HTTPError as exc:
            raise _unreachable("Prometheus", self.url, exc) from None
        if response.status_code != 200:
            raise SourceUnavailable(
                f"Prometheus at {self.url} is not ready (HTTP {response.status_code})"
            )

    def query_range(self, expr: str, start: datetime, end: datetime, step: float) -> list[Series]:
        params = range_query_params(expr, start, end, step)
        try:
            response = self.http.get(f"{self.url}/api/v1/query_range", params=params)
        except httpx.HTTPError as exc:
            raise _unreachable("Prometheus", self.url, exc) from None
        body = _json(response, "Prometheus")
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise SourceUnavailable(f"query failed: {error or f'HTTP {response.status_code}'}")
        series = []
        for item in body.get("data", {}).get("result") or []:
            values = []
            for _, text in item.get("values") or []:
                value = float(text)
                if not math.isnan(value):
                    values.append(value)
            labels = {k: v for k, v in (item.get("metric") or {}).items() if k not in SCRAPE_LABELS}
            series.append(Series(labels, tuple(values)))
        return series


def _number(value: float, unit: str) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == int(value) and abs(value) < 1e15:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit not in ("", "/s") else text + unit


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def metrics_section(
    http: httpx.Client,
    config: native.LabConfig,
    request: EvidenceRequest,
    program: Program,
    claim_promql: str | None,
) -> Section:
    url = prometheus_url(config)
    title = "Key metrics"
    prometheus = Prometheus(http, url)
    try:
        prometheus.ready()
    except SourceUnavailable as exc:
        return Section(
            title,
            f"{exc}. The native lab starts Prometheus only when the `prometheus` binary is on "
            f"PATH (or set {PROMETHEUS_URL_ENV})",
            reached=False,
        )
    queries = list(scenario_metrics(program, request.scenario))
    if claim_promql:
        queries.append(MetricQuery("the accepted claim's own query", claim_promql))
    # About 200 points per series, never finer than the 5 s scrape interval.
    step = max(5.0, math.ceil(request.since_s / 200))
    rows = ["| metric | series | min | median | max | last |", "|---|---|---|---|---|---|"]
    for query in queries:
        try:
            series = prometheus.query_range(query.expr, request.start, request.now, step)
        except SourceUnavailable as exc:
            rows.append(f"| {_cell(query.title)} | {_cell(str(exc))} | | | | |")
            continue
        series = [s for s in series if s.values]
        if not series:
            rows.append(f"| {_cell(query.title)} | no data in the window | | | | |")
            continue
        for one in sorted(series, key=lambda s: sorted(s.labels.items())):
            scaled = [v * query.scale for v in one.values]
            stats = (min(scaled), statistics.median(scaled), max(scaled), scaled[-1])
            labels = " ".join(f"{k}={v}" for k, v in sorted(one.labels.items())) or "-"
            cells = " | ".join(_number(v, query.unit) for v in stats)
            rows.append(f"| {_cell(query.title)} | {_cell(labels)} | {cells} |")
    body = [
        f"Over the last {request.since_text}, one point every {step:g} s; rates over 1 m.",
        "",
        *rows,
        "",
        "The queries:",
        "",
        "```promql",
        *(f"# {q.title}\n{q.expr}" for q in queries),
        "```",
    ]
    return Section(title, f"Prometheus at {url} (`/api/v1/query_range`)", body)


# -- 5. logs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    """One JSON log line of a lab service, and the file it was read from."""

    entry: Mapping[str, Any]
    path: Path

    @property
    def ts(self) -> str:
        return str(self.entry.get("ts", ""))

    @property
    def level(self) -> str:
        return str(self.entry.get("level", ""))


_BASE_FIELDS = ("ts", "level", "service", "trace_id", "span_id", "msg", "logger", "exc")
_SEVERE = {"warning", "error", "critical", "exception"}


def read_log_lines(log_dir: Path, trace_ids: Iterable[str]) -> dict[str, list[LogLine]]:
    """Every JSON line in log_dir/*.log carrying one of the trace ids, by trace id, in ts order."""
    wanted = set(trace_ids)
    found: dict[str, list[LogLine]] = {t: [] for t in wanted}
    for path in sorted(log_dir.glob("*.log")):
        try:
            handle = path.open("r", encoding="utf-8", errors="replace")
        except OSError:
            continue
        with handle:
            for text in handle:
                # Cheap before parsing: a log flood is millions of lines with other ids.
                if '"trace_id"' not in text or not any(t in text for t in wanted):
                    continue
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("trace_id") in wanted:
                    found[str(entry["trace_id"])].append(LogLine(entry, path))
    for lines in found.values():
        lines.sort(key=lambda line: line.ts)
    return found


def _keep(lines: Sequence[LogLine], limit: int) -> list[LogLine]:
    """At most limit lines: every warning and error first, then the earliest others."""
    if len(lines) <= limit:
        return list(lines)
    severe = [line for line in lines if line.level in _SEVERE][:limit]
    others = [line for line in lines if line.level not in _SEVERE][: limit - len(severe)]
    chosen = {id(line) for line in (*severe, *others)}
    return [line for line in lines if id(line) in chosen]


def _log_text(line: LogLine) -> list[str]:
    entry = line.entry
    extras = " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in entry.items()
        if k not in _BASE_FIELDS
    )
    text = (
        f"{line.ts} {entry.get('service', '?')} {line.level} span={entry.get('span_id')} "
        f"[{entry.get('logger', '')}] {entry.get('msg', '')}" + (f"  {extras}" if extras else "")
    )
    lines = [text]
    if entry.get("exc"):
        trace = str(entry["exc"]).splitlines()
        shown = trace[-TRACEBACK_LINES:]
        if len(trace) > len(shown):
            lines.append(f"    … {len(trace) - len(shown)} traceback lines above not shown")
        lines += [f"    {t}" for t in shown]
    return [t.replace("```", "'''") for t in lines]


def log_section(
    config: native.LabConfig, request: EvidenceRequest
) -> tuple[Section, list[LogLine]]:
    title = "Log lines of these traces"
    log_dir = config.log_dir
    where = (
        f"`{log_dir}/*.log` (the native lab's service logs). The compose lab's services log "
        "to their containers (`docker compose logs <service>`), which this command does not read"
    )
    if not log_dir.is_dir():
        return Section(title, f"no log directory at {where}", reached=False), []
    found = read_log_lines(log_dir, request.trace_ids)
    body: list[str] = []
    every: list[LogLine] = []
    for trace_id in request.trace_ids:
        lines = found[trace_id]
        every += lines
        body += [f"### Trace `{trace_id}`", ""]
        if not lines:
            body += ["No log line carries this trace id.", ""]
            continue
        kept = _keep(lines, request.log_lines)
        files = sorted({line.path.name for line in lines})
        note = f"{_count(len(lines), 'line')} in {', '.join(f'`{f}`' for f in files)}, by ts."
        if len(kept) < len(lines):
            note += (
                f" Showing {len(kept)} of them (--log-lines {request.log_lines}): every warning "
                f"and error first, then the earliest others; {len(lines) - len(kept)} not shown."
            )
        body += [note, "", "```text", *(t for line in kept for t in _log_text(line)), "```", ""]
    return Section(title, where, body), every


# -- 6. the last verify run -------------------------------------------------------------------


def latest_result(runs_dir: Path, scenario: str) -> tuple[Path, Mapping[str, Any]] | None:
    """The newest verify result.json of a scenario under runs_dir, by its started_at."""
    newest: tuple[datetime, float, Path, Mapping[str, Any]] | None = None
    for path in runs_dir.glob("*/result.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict) or result.get("scenario") != scenario:
            continue
        started = _parse_time(result.get("started_at")) or datetime.min.replace(tzinfo=UTC)
        key = (started, path.stat().st_mtime, path, result)
        if newest is None or key[:2] > newest[:2]:
            newest = key
    return (newest[2], newest[3]) if newest else None


def _bound(check: Mapping[str, Any]) -> str:
    parts = []
    if check.get("max") is not None:
        parts.append(f"<= {check['max']:g}")
    if check.get("min") is not None:
        parts.append(f">= {check['min']:g}")
    return " and ".join(parts) or "-"


def verify_section(config: native.LabConfig, scenario: str) -> Section:
    title = "The last verify run"
    runs = config.state_dir / "runs"
    found = latest_result(runs, scenario)
    if found is None:
        return Section(
            title,
            f"no result.json for `{scenario}` under `{runs}`: run `drill verify {scenario}` "
            "(it writes one per run)",
            reached=False,
        )
    path, result = found
    mode = "baseline (every trigger off)" if result.get("baseline") else "triggers on"
    verdict = "PASS" if result.get("passed") else "FAIL"
    body = [
        f"**{verdict}**: `drill verify {scenario}` started {result.get('started_at')}, {mode}, "
        f"{result.get('users')} users for {result.get('load_seconds')} s"
        + (
            f" (first {result['warmup_seconds']:g} s not judged)"
            if result.get("warmup_seconds")
            else ""
        )
        + ".",
        "",
        "| result | kind | check | figure | value | bound |",
        "|---|---|---|---|---|---|",
    ]
    for check in result.get("checks") or []:
        figure = str(check.get("figure", "")) + (
            f" [{check['request']}]" if check.get("request") else ""
        )
        value = check.get("value")
        shown = f"{value:.6g}" if isinstance(value, int | float) else str(value)
        body.append(
            "| "
            + " | ".join(
                _cell(part)
                for part in (
                    "pass" if check.get("passed") else "FAIL",
                    str(check.get("kind", "")),
                    str(check.get("name", "")),
                    figure,
                    shown,
                    _bound(check),
                )
            )
            + " |"
        )
    return Section(title, f"`{_relative(path, config.root)}`", body)


# -- 7. the code the traces point to ----------------------------------------------------------


@dataclass(frozen=True)
class CodeRange:
    path: str  # relative to the lab's root
    start: int
    end: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.start}-{self.end}"


@dataclass
class _Pointer:
    where: CodeRange
    seen: set[str] = field(default_factory=set)
    calls: list[CodeRange] = field(default_factory=list)


_HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}
_ACCESS_LOG = re.compile(r"^([A-Z]+) (/\S*) (\d{3})$")
_LOG_LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}


class SourceTree:
    """The lab's service code, read as text: route functions, log calls and definitions.

    Parsed, not imported: the tree under --root (a team's fix, a copied lab) is what runs, and
    its line numbers are the ones that matter.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[Path, ast.Module | None] = {}

    def module(self, path: Path) -> ast.Module | None:
        if path not in self._modules:
            try:
                self._modules[path] = ast.parse(path.read_text(), str(path))
            except (OSError, SyntaxError, ValueError):
                self._modules[path] = None
        return self._modules[path]

    def package_files(self, service: str) -> list[Path]:
        """The .py files of the package that serves a lab service (chain-a: services/chain)."""
        spec = native.SERVICES.get(service)
        if spec is None:
            return []
        package = self.root / Path(*spec.app.split(":")[0].split(".")[:-1])
        return sorted(package.glob("*.py"))

    def route(self, service: str, method: str, route: str) -> tuple[Path, ast.AST] | None:
        """The function that serves METHOD route in the service's package."""
        for path in self.package_files(service):
            module = self.module(path)
            if module is None:
                continue
            for node in module.body:
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for decorator in node.decorator_list:
                    if _route_of(decorator) == (method.lower(), route):
                        return path, node
        return None

    def log_calls(self) -> Iterator[tuple[str, re.Pattern[str], Path, ast.Call]]:
        """(logger name, message pattern, file, call) of every constant-format log call."""
        for path in sorted((self.root / "services").rglob("*.py")):
            module = self.module(path)
            if module is None:
                continue
            loggers = _module_loggers(module)
            for node in ast.walk(module):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LOG_LEVELS
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in loggers
                    and node.args
                ):
                    continue
                pattern = _message_pattern(node.args[0])
                if pattern is not None:
                    yield loggers[node.func.value.id], pattern, path, node

    def function_at(self, path: Path, line: int) -> ast.AST | None:
        """The innermost function or class definition holding a line."""
        module = self.module(path)
        best: ast.AST | None = None
        for node in ast.walk(module) if module else ():
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                end = node.end_lineno or node.lineno
                if _first_line(node) <= line <= end and (
                    best is None or _first_line(node) >= _first_line(best)
                ):
                    best = node
        return best

    def callees(self, path: Path, function: ast.AST) -> list[CodeRange]:
        """The service's own functions and classes that function calls by name, or through a
        name (`Model.of(...)`): one hop, in call order, at most MAX_CALLEES."""
        module = self.module(path)
        if module is None:
            return []
        imported = {
            alias.asname or alias.name: (node.module or "", alias.name)
            for node in module.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services.")
            for alias in node.names
        }
        found: dict[str, CodeRange] = {}
        calls = sorted(
            (n for n in ast.walk(function) if isinstance(n, ast.Call)),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for call in calls:
            callee = call.func.value if isinstance(call.func, ast.Attribute) else call.func
            if not isinstance(callee, ast.Name) or callee.id in found:
                continue
            name = callee.id
            if name in imported:
                dotted, original = imported[name]
                target = (self.root / Path(*dotted.split("."))).with_suffix(".py")
            else:
                target, original = path, name
            definition = self._definition(target, original)
            if definition is not None and definition is not function:
                found[name] = self._range(target, definition, f"`{name}`")
            if len(found) == MAX_CALLEES:
                break
        return list(found.values())

    def _definition(self, path: Path, name: str) -> ast.AST | None:
        module = self.module(path)
        for node in module.body if module else ():
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and node.name == name
            ):
                return node
        return None

    def _range(self, path: Path, node: ast.AST, what: str) -> CodeRange:
        end = getattr(node, "end_lineno", None) or _first_line(node)
        return CodeRange(_relative(path, self.root), _first_line(node), end, what)


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([int(getattr(node, "lineno", 1)), *(int(d.lineno) for d in decorators)])


def _route_of(decorator: ast.expr) -> tuple[str, str] | None:
    """("post", "/orders") for `@router.post("/orders", ...)`."""
    if not (
        isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr in _HTTP_METHODS
        and decorator.args
        and isinstance(decorator.args[0], ast.Constant)
        and isinstance(decorator.args[0].value, str)
    ):
        return None
    return decorator.func.attr, decorator.args[0].value


def _module_loggers(module: ast.Module) -> dict[str, str]:
    """Variable name -> logger name for `log = logging.getLogger("chain")` at module level."""
    loggers: dict[str, str] = {}
    for node in module.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "getLogger"
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
            and isinstance(node.value.args[0].value, str)
        ):
            loggers[node.targets[0].id] = node.value.args[0].value
    return loggers


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdirfgeExXoc%]")


def _message_pattern(argument: ast.expr) -> re.Pattern[str] | None:
    """A regex matching what a log call's message renders to, from its format string."""
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        parts = []
        position = 0
        for match in _PERCENT.finditer(argument.value):
            parts.append(re.escape(argument.value[position : match.start()]))
            parts.append("%" if match.group() == "%%" else ".*?")
            position = match.end()
        parts.append(re.escape(argument.value[position:]))
        return re.compile("".join(parts), re.DOTALL)
    if isinstance(argument, ast.JoinedStr):
        pieces = [
            re.escape(v.value)
            if isinstance(v, ast.Constant) and isinstance(v.value, str)
            else ".*?"
            for v in argument.values
        ]
        return re.compile("".join(pieces), re.DOTALL)
    return None


def _code_attribute(span: Span, *keys: str) -> Any:
    for key in keys:
        if span.attributes.get(key) not in (None, ""):
            return span.attributes[key]
    return None


def _local_path(root: Path, text: str) -> Path | None:
    """A span's file path as a file under root: as given, or its tail (a container's
    /app/services/... is the checkout's services/...)."""
    path = Path(text)
    parts = path.parts
    candidates = [path if path.is_absolute() else root / path]
    candidates += [root.joinpath(*parts[index:]) for index in range(1, len(parts))]
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
            return candidate
    return None


def code_section(
    config: native.LabConfig, spans: Sequence[Span], lines: Sequence[LogLine]
) -> Section:
    title = "Code the traces point to"
    tree = SourceTree(config.root)
    pointers: dict[tuple[str, int, int], _Pointer] = {}
    unmatched: set[str] = set()

    def point(path: Path, node: ast.AST, what: str, seen: str, follow: bool = True) -> None:
        where = tree._range(path, node, what)
        key = (where.path, where.start, where.end)
        if key not in pointers:
            pointers[key] = _Pointer(where, calls=tree.callees(path, node) if follow else [])
        pointers[key].seen.add(seen)

    def route(service: str, method: str, template: str, seen: str) -> None:
        found = tree.route(service, method, template)
        if found is None:
            unmatched.add(f"{method} {template} of `{service}`")
            return
        path, node = found
        name = getattr(node, "name", "?")
        point(path, node, f"{method} {template} of `{service}` (route function `{name}`)", seen)

    for span in spans:
        filepath = _code_attribute(span, "code.filepath", "code.file.path")
        lineno = _code_attribute(span, "code.lineno", "code.line.number")
        if filepath and lineno:
            path = _local_path(config.root, str(filepath))
            node = tree.function_at(path, int(lineno)) if path else None
            if path is not None and node is not None:
                name = getattr(node, "name", "?")
                point(path, node, f"`{name}` (span code attributes)", "span code attributes")
                continue
            unmatched.add(f"{filepath}:{lineno} (from a span of `{span.service}`)")
        template = span.attributes.get("http.route")
        if template and span.attributes.get("span.kind") in ("server", None):
            method = str(
                span.attributes.get("http.method")
                or span.attributes.get("http.request.method")
                or span.name.split(" ", 1)[0]
            ).upper()
            route(span.service, method, str(template), "spans")
    calls = list(tree.log_calls()) if lines else []
    for line in lines:
        entry = line.entry
        service, logger, msg = (str(entry.get(k, "")) for k in ("service", "logger", "msg"))
        access = _ACCESS_LOG.match(msg) if logger == "http" else None
        if access:
            # The RED middleware's line per request names the route template it served.
            route(service, access.group(1), access.group(2), "log lines")
            continue
        for name, pattern, path, call in calls:
            if name == logger and pattern.fullmatch(msg):
                function = tree.function_at(path, call.lineno)
                node = function if function is not None else call
                point(path, node, f"log call `{logger}`: {msg!r}", "log lines", follow=False)
                break
    if not pointers:
        why = (
            "nothing to map: no spans and no log lines of these traces were found"
            if not spans and not lines
            else "no route, code attribute or log call of these traces matched the code under "
            f"`{config.root}`"
        )
        body = [f"Not matched to code: {', '.join(sorted(unmatched))}."] if unmatched else []
        return Section(title, why, body, reached=False)
    body = []
    for pointer in sorted(pointers.values(), key=lambda p: (p.where.path, p.where.start)):
        seen = ", ".join(sorted(pointer.seen))
        body.append(f"- `{pointer.where}`: {pointer.where.what} (from {seen})")
        body += [f"  - calls {c.what} at `{c}`" for c in pointer.calls]
    if unmatched:
        body += ["", f"Not matched to code: {', '.join(sorted(unmatched))}."]
    source = (
        "span attributes (`code.*` where present, else each server span's `http.route`) and "
        f"the log lines' `logger` and `msg`, matched against the source under `{config.root}` "
        "(parsed, not imported); paths relative to it"
    )
    return Section(title, source, body)


# -- helpers ----------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
