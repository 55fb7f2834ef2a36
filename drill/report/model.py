"""What the report is made of: the data gathered from the lab, and the document drawn from it.

Gathering (drill.report.sources, .prom, .probe, .traces) fills the first half; the sections
(drill.report.sections) turn it into the second; the renderers (drill.report.render) only lay
the document out as HTML or Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drill.program.journal import Event

# -- the window ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The stretch of time the report covers (aware UTC datetimes)."""

    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def holds(self, when: datetime) -> bool:
        return self.start <= when <= self.end


def epoch(when: datetime) -> float:
    return when.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- gathered data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One labelled time series of a Prometheus range query (epoch seconds, values)."""

    labels: dict[str, str]
    times: tuple[float, ...]
    values: tuple[float, ...]

    def finite(self) -> list[tuple[float, float]]:
        return [(t, v) for t, v in zip(self.times, self.values, strict=True) if math.isfinite(v)]


@dataclass(frozen=True)
class Answer:
    """A range query's series, or why there are none."""

    query: str
    series: tuple[Series, ...] = ()
    error: str | None = None

    def points(self) -> int:
        return sum(len(s.finite()) for s in self.series)

    def one(self) -> Series | None:
        """The query's single series (the report's queries aggregate to one), if any."""
        return self.series[0] if self.series else None


@dataclass(frozen=True)
class VerifyRun:
    """One `drill verify` run of this lab, from its result.json (and the journal's line)."""

    id: str
    scenario: str
    baseline: bool
    passed: bool
    started: datetime
    load_started: float  # epoch seconds: when Locust began (else when verify started)
    finished: datetime  # the journal's verify_run line, else the load's end
    load_seconds: float
    warmup_seconds: float
    figures: dict[str, float]
    checks: tuple[dict[str, Any], ...]
    directory: Path

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def figure(self, name: str) -> float:
        value = self.figures.get(name)
        return float(value) if isinstance(value, int | float) else math.nan


@dataclass(frozen=True)
class Restart:
    """A process of a lab service began: a deploy candidate."""

    service: str
    at: datetime
    source: str  # "prometheus" (process_start_time_seconds) or "run file"


@dataclass(frozen=True)
class ProbeRow:
    """One reader's timelines, read by the report's probe one after the other."""

    user_id: int
    followees: int
    reads: int
    failed: int
    statements: float  # per request, from the feed's own histogram deltas
    calls: float
    p50_ms: float
    p95_ms: float
    observed: int  # timeline requests the feed counted meanwhile (more: others were reading)


@dataclass(frozen=True)
class Probe:
    """A probe of the running feed: when, with which flags live, and one row per reader."""

    at: datetime
    url: str
    rows: tuple[ProbeRow, ...]
    flags: dict[str, str]
    feed_started: float | None  # the feed process's start (epoch), from its /metrics

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "url": self.url,
            "flags": self.flags,
            "feed_started": self.feed_started,
            "rows": [row.__dict__ for row in self.rows],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Probe:
        return cls(
            at=datetime.fromisoformat(document["at"]),
            url=str(document.get("url", "")),
            rows=tuple(ProbeRow(**row) for row in document["rows"]),
            flags={str(k): str(v) for k, v in (document.get("flags") or {}).items()},
            feed_started=document.get("feed_started"),
        )


@dataclass(frozen=True)
class Span:
    """One span of a trace, in milliseconds from the trace's first span."""

    name: str
    service: str
    start_ms: float
    duration_ms: float
    depth: int


@dataclass(frozen=True)
class Trace:
    trace_id: str
    started: datetime
    spans: tuple[Span, ...]

    @property
    def duration_ms(self) -> float:
        return max((s.start_ms + s.duration_ms for s in self.spans), default=0.0)


@dataclass
class Gathered:
    """Everything the report read, and a note for each source it could not read."""

    window: Window
    root: Path
    state_dir: Path
    view: Window | None = None  # the part of the window with anything in it: the plots' axis
    events: tuple[Event, ...] = ()
    journal_notes: tuple[str, ...] = ()
    journal_found: bool = False
    runs: tuple[VerifyRun, ...] = ()
    run_notes: tuple[str, ...] = ()
    restarts: tuple[Restart, ...] = ()
    prometheus_url: str = ""
    prometheus_problem: str | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    probes: tuple[Probe, ...] = ()
    probe_problem: str | None = None
    jaeger_url: str = ""
    traces: tuple[Trace, ...] = ()
    traces_problem: str | None = None
    board: dict[str, Any] | None = None
    board_problem: str | None = None
    scenario_services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    dark_room_minutes: float = 40.0


# -- the document --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A plot: its file-safe name, caption, PNG bytes, and how many data points it draws."""

    name: str
    caption: str
    png: bytes
    points: int


@dataclass(frozen=True)
class Table:
    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    name: str = ""


@dataclass
class Section:
    """One section: what it shows, where it came from, and what it could not reach."""

    id: str
    title: str
    sources: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    kpis: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, how)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    title: str
    generated: datetime
    window: Window
    sections: tuple[Section, ...]
