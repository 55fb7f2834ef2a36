"""The report's plots, drawn with matplotlib (Agg, no pyplot: no global state, no display).

Each function takes gathered data and returns a `Figure` (PNG bytes and the number of data
points it drew), or None when it has nothing to draw: an empty axis is never shipped.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Patch

from drill.program.journal import Event
from drill.report.model import Figure, Series, Trace, VerifyRun, Window

DPI = 100
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PASS, FAIL, ERROR = "#2e7d32", "#c62828", "#6d4c41"
DEPLOY = "#1565c0"
PHASE_COLORS = ("#e3f2fd", "#fff3e0", "#f3e5f5", "#e8f5e9", "#fce4ec", "#ede7f6")
# Rows of the timeline's event axis, top to bottom, and the journal kinds each one shows.
EVENT_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "program",
        (
            "program_started",
            "program_stopped",
            "reveal_changed",
            "message_shown",
            "traffic_started",
            "traffic_stopped",
            "note",
            "team_added",
        ),
    ),
    ("flags", ("flag_changed",)),
    ("hints", ("hint_released", "hint_unlocked")),
    ("claims", ("claim_filed", "claim_judged")),
    ("verify", ("verify_run", "verify_submitted")),
)


@dataclass(frozen=True)
class Metric:
    """One axis under the timeline: a title, a unit and its labelled series."""

    title: str
    unit: str
    lines: tuple[tuple[str, Series], ...]


def _png(figure: MplFigure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _times(series: Series) -> tuple[list[float], list[float], int]:
    """Date numbers and values, NaN kept (the line breaks there), and the finite points."""
    finite = sum(math.isfinite(v) for v in series.values)
    return [_days(t) for t in series.times], list(series.values), finite


def _days(seconds: float) -> float:
    """matplotlib's date number (days since its date epoch) for epoch seconds."""
    return seconds / 86400 + _epoch_days()


@functools.cache
def _epoch_days() -> float:
    return _num(_UNIX_EPOCH)


def _num(when: datetime) -> float:
    """matplotlib's number for a time (its dates module is not typed)."""
    return float(mdates.date2num(when))  # type: ignore[no-untyped-call]


def _time_axis(ax: Axes, window: Window) -> None:
    ax.set_xlim(_num(window.start), _num(window.end))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=UTC))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    ax.grid(True, axis="x", color="#dddddd", linewidth=0.6)


def _deploy_lines(axes: Sequence[Axes], deploys: Sequence[tuple[str, datetime]]) -> None:
    """A dashed line at each deploy; one label for deploys too close together to tell apart."""
    if not axes or not deploys:
        return
    low, high = axes[0].get_xlim()
    close = (high - low) * 0.03
    labels: list[tuple[float, list[str]]] = []
    for name, when in sorted(deploys, key=lambda d: d[1]):
        at = _num(when)
        if labels and at - labels[-1][0] <= close:
            labels[-1][1].append(name)
        else:
            labels.append((at, [name]))
    for ax in axes:
        for _, when in deploys:
            ax.axvline(_num(when), color=DEPLOY, linestyle="--", linewidth=1.2)
    for at, names in labels:
        right = at > low + 0.7 * (high - low)  # label to the left of a late line: keep it in
        axes[0].annotate(
            f"fix deployed: {', '.join(names)}",
            (at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right else 3, -10),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=7,
            color=DEPLOY,
        )


def _lines(ax: Axes, metric: Metric) -> int:
    drawn = 0
    for label, series in metric.lines:
        times, values, finite = _times(series)
        if finite:
            ax.plot(times, values, label=label, linewidth=1.2)
            drawn += finite
    ax.set_ylabel(metric.unit, fontsize=8)
    ax.set_title(metric.title, fontsize=9, loc="left")
    if len(metric.lines) > 1 and drawn:
        ax.legend(fontsize=7, loc="upper right")
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no data in this window",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#888888",
        )
    return drawn


def _phases(events: Sequence[Event], window: Window) -> list[tuple[datetime, datetime, str, str]]:
    """(start, end, name, type) of each agenda entry the journal shows, clipped to the window."""
    spans: list[tuple[datetime, datetime, str, str]] = []
    current: tuple[datetime, str, str] | None = None
    for event in events:
        if event.kind not in ("phase_changed", "program_stopped", "program_started"):
            continue
        if current is not None:
            spans.append((current[0], event.ts, current[1], current[2]))
            current = None
        entry = event.fields.get("entry")
        kind = str(event.fields.get("type", "phase"))
        if event.kind == "phase_changed" and entry and kind != "finished":
            current = (event.ts, str(entry), kind)
    if current is not None:
        spans.append((current[0], window.end, current[1], current[2]))
    return [
        (max(s, window.start), min(e, window.end), n, k)
        for s, e, n, k in spans
        if e >= window.start and s <= window.end
    ]


def _event_color(event: Event) -> str:
    verdict = str(event.fields.get("verdict", ""))
    if verdict in ("pass", "accepted"):
        return PASS
    if verdict in ("fail", "rejected"):
        return FAIL
    if verdict == "error":
        return ERROR
    if event.kind == "flag_changed" and event.fields.get("variant") in ("off", None):
        return "#9e9e9e"
    return "#37474f"


def timeline(
    window: Window,
    events: Sequence[Event],
    runs: Sequence[VerifyRun],
    metrics: Sequence[Metric],
    deploys: Sequence[tuple[str, datetime]],
) -> Figure | None:
    """Phases, flags, hints, claims and verify runs on one axis; the key metrics under it."""
    shown = [e for e in events if window.holds(e.ts)]
    phases = _phases(events, window)
    if not shown and not runs and not any(s.finite() for m in metrics for _, s in m.lines):
        return None
    figure = MplFigure(figsize=(11, 3.2 + 1.9 * len(metrics)), layout="constrained")
    ratios = [2.2, *([1.4] * len(metrics))]
    axes = list(
        figure.subplots(1 + len(metrics), 1, sharex=True, height_ratios=ratios, squeeze=False)[:, 0]
    )
    top = axes[0]
    points = 0
    for index, (start, end, name, kind) in enumerate(phases):
        color = "#eeeeee" if kind == "break" else PHASE_COLORS[index % len(PHASE_COLORS)]
        top.axvspan(_num(start), _num(end), color=color, zorder=0)
        top.text(
            _num(start),
            len(EVENT_ROWS) - 0.45 - 0.3 * (index % 2),
            name[:28],
            fontsize=6,
            va="top",
            clip_on=True,
        )
        points += 1
    rows = {
        kind: len(EVENT_ROWS) - 1 - i for i, (_, kinds) in enumerate(EVENT_ROWS) for kind in kinds
    }
    for run in runs:
        color = PASS if run.passed else FAIL
        row = rows["verify_run"]
        top.plot(
            [_num(run.started), _num(run.finished)],
            [row, row],
            color=color,
            linewidth=6,
            solid_capstyle="butt",
            alpha=0.6,
        )
        points += 1
    by_row: dict[int, tuple[list[float], list[str]]] = {}
    for event in shown:
        lane = rows.get(event.kind)
        if lane is None:
            continue
        when, colors = by_row.setdefault(lane, ([], []))
        when.append(_num(event.ts))
        colors.append(_event_color(event))
    for row, (when, colors) in by_row.items():
        top.scatter(when, [row] * len(when), c=colors, s=18, marker="|", linewidths=1.6, zorder=3)
        points += len(when)
    top.set_yticks(range(len(EVENT_ROWS)), [name for name, _ in reversed(EVENT_ROWS)], fontsize=8)
    top.set_ylim(-0.6, len(EVENT_ROWS) - 0.2)
    top.set_title(
        "journal: phases (shaded), flags, hints, claims, verify runs (green pass, red fail)",
        fontsize=9,
        loc="left",
    )
    for ax, metric in zip(axes[1:], metrics, strict=True):
        points += _lines(ax, metric)
    for ax in axes:
        _time_axis(ax, window)
    _deploy_lines(axes, deploys)
    axes[-1].set_xlabel("UTC")
    return Figure(
        "timeline",
        "The timeline: the journal's events over the drills' key metrics (shared time axis).",
        _png(figure),
        points,
    )


def panels(
    name: str,
    caption: str,
    window: Window,
    metrics: Sequence[Metric],
    deploys: Sequence[tuple[str, datetime]],
    shade: tuple[datetime, datetime] | None = None,
    shade_label: str = "",
) -> Figure | None:
    """Metrics on stacked axes over the window, the deploys marked, an optional stretch shaded."""
    if not any(s.finite() for m in metrics for _, s in m.lines):
        return None
    figure = MplFigure(figsize=(11, 1.2 + 2.0 * len(metrics)), layout="constrained")
    axes = list(figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0])
    points = sum(_lines(ax, metric) for ax, metric in zip(axes, metrics, strict=True))
    for ax in axes:
        _time_axis(ax, window)
        if shade is not None:
            ax.axvspan(
                _num(shade[0]),
                _num(shade[1]),
                color="#ffcdd2",
                alpha=0.5,
                zorder=0,
                label=shade_label or None,
            )
    if shade is not None and shade_label:
        axes[0].legend(fontsize=7, loc="upper left")
    _deploy_lines(axes, deploys)
    axes[-1].set_xlabel("UTC")
    return Figure(name, caption, _png(figure), points)


def latency_histogram(
    name: str, caption: str, groups: Sequence[tuple[str, Sequence[float]]]
) -> Figure | None:
    """Request latencies of each group (ms) as overlaid histograms on log-spaced bins."""
    groups = [
        (label, [v for v in values if v > 0 and math.isfinite(v)]) for label, values in groups
    ]
    groups = [(label, values) for label, values in groups if values]
    if not groups:
        return None
    low = min(min(values) for _, values in groups)
    high = max(max(values) for _, values in groups)
    low, high = max(low * 0.9, 0.1), max(high * 1.1, low * 2)
    edges = [low * (high / low) ** (i / 40) for i in range(41)]
    figure = MplFigure(figsize=(11, 3.6), layout="constrained")
    ax = figure.subplots()
    for label, values in groups:
        ax.hist(values, bins=edges, alpha=0.55, label=f"{label} ({len(values)} requests)")
    ax.set_xscale("log")
    ax.set_xlabel("request latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    return Figure(name, caption, _png(figure), sum(len(v) for _, v in groups))


def waterfalls(name: str, caption: str, traces: Sequence[tuple[str, Trace]]) -> Figure | None:
    """Each trace as a span waterfall: one bar per span at its start, as long as it took."""
    traces = [(label, t) for label, t in traces if t.spans]
    if not traces:
        return None
    figure = MplFigure(figsize=(11, 2.2 + 2.4 * len(traces)), layout="constrained")
    # One time scale for both: the fix's page is as short next to the ladder as it was.
    axes = list(figure.subplots(len(traces), 1, sharex=True, squeeze=False)[:, 0])
    points = 0
    for ax, (label, trace) in zip(axes, traces, strict=True):
        colors = [_span_color(s.name) for s in trace.spans]
        rows = list(range(len(trace.spans)))
        ax.barh(
            rows,
            [max(s.duration_ms, 0.05) for s in trace.spans],
            left=[s.start_ms for s in trace.spans],
            color=colors,
            height=0.8,
        )
        points += len(rows)
        ax.invert_yaxis()
        ax.set_yticks([])
        ax.set_ylabel(f"{len(rows)} spans", fontsize=8)
        ax.set_title(f"{label}: {trace.duration_ms:,.0f} ms", fontsize=9, loc="left")
    legend = [Patch(color=c, label=n) for n, c in SPAN_COLORS.items()]
    axes[0].legend(handles=legend, fontsize=7, loc="center right")
    axes[-1].set_xlabel("ms from the request's start")
    return Figure(name, caption, _png(figure), points)


SPAN_COLORS = {"database statement": "#8d6e63", "HTTP call": "#1e88e5", "other": "#78909c"}


def _span_color(name: str) -> str:
    upper = name.upper()
    if upper.startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "CONNECT")) or " DB" in upper:
        return SPAN_COLORS["database statement"]
    if "/PROFILES" in upper or upper.startswith(("GET", "POST")) and "/FEED/" not in upper:
        return SPAN_COLORS["HTTP call"]
    return SPAN_COLORS["other"]


def round_trips(
    name: str, caption: str, sides: Sequence[tuple[str, float, float]]
) -> Figure | None:
    """Without traces: each side's statements and external calls per request, as the order of
    its round trips (not their timing), from measured counts, on one shared axis."""
    sides = [(label, s, c) for label, s, c in sides if math.isfinite(s) and math.isfinite(c)]
    if not sides:
        return None
    figure = MplFigure(figsize=(11, 1.6 + 1.6 * len(sides)), layout="constrained")
    axes = list(figure.subplots(len(sides), 1, sharex=True, squeeze=False)[:, 0])
    points = 0
    widest = max(round(s) + round(c) for _, s, c in sides)
    for ax, (label, statements, calls) in zip(axes, sides, strict=True):
        n_statements, n_calls = round(statements), round(calls)
        ax.broken_barh([(i, 0.9) for i in range(n_statements)], (1, 0.8), color="#8d6e63")
        ax.broken_barh([(n_statements + i, 0.9) for i in range(n_calls)], (0, 0.8), color="#1e88e5")
        points += n_statements + n_calls
        ax.set_yticks([0.4, 1.4], ["profile calls", "DB statements"], fontsize=8)
        ax.set_xlim(0, max(widest, 1) * 1.02)
        ax.set_title(
            f"{label}: {_count(statements)} statements, then {_count(calls)} profile calls per "
            "request",
            fontsize=9,
            loc="left",
        )
    axes[-1].set_xlabel("round trips of one timeline, in order (not a time axis)")
    return Figure(name, caption, _png(figure), points)


def _count(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


# Past this many (team, scenario) results a bar each is too tall: one dot each, per scenario.
MAX_BARS = 24


def teams(
    name: str,
    caption: str,
    rows: Sequence[tuple[str, str, float, int, bool]],
    mark_minutes: float,
) -> Figure | None:
    """Minutes to root cause per (team, scenario) against the dark room's mark, with the hints
    used and whether a fix was verified."""
    rows = [r for r in rows if math.isfinite(r[2])]
    if not rows:
        return None
    if len(rows) > MAX_BARS:
        return _team_dots(name, caption, rows, mark_minutes)
    figure = MplFigure(figsize=(11, 1.4 + 0.45 * len(rows)), layout="constrained")
    ax = figure.subplots()
    minutes = [m for _, _, m, _, _ in rows]
    colors = [PASS if m <= mark_minutes else "#ef6c00" for m in minutes]
    ax.barh(range(len(rows)), minutes, color=colors, height=0.6)
    for index, (_, _, value, hints, fixed) in enumerate(rows):
        note = f" {hints} hint(s)" + (", fix verified" if fixed else "")
        ax.text(value, index, note, va="center", fontsize=7)
    _mark(ax, mark_minutes)
    ax.set_yticks(range(len(rows)), [f"{t} · {s}" for t, s, _, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("program minutes from the scenario going live to the accepted root cause")
    ax.set_xlim(0, max(max(minutes), mark_minutes) * 1.25)
    return Figure(name, caption, _png(figure), len(rows))


def _team_dots(
    name: str,
    caption: str,
    rows: Sequence[tuple[str, str, float, int, bool]],
    mark_minutes: float,
) -> Figure:
    """Many teams: one dot per (team, scenario), a row per scenario; filled when the fix was
    verified, larger with each hint used."""
    scenarios = list(dict.fromkeys(scenario for _, scenario, _, _, _ in rows))
    figure = MplFigure(figsize=(11, 1.6 + 0.9 * len(scenarios)), layout="constrained")
    ax = figure.subplots()
    for fixed in (True, False):
        chosen = [r for r in rows if r[4] is fixed]
        if not chosen:
            continue
        ys = [scenarios.index(r[1]) + 0.25 * math.sin(i * 2.4) for i, r in enumerate(chosen)]
        ax.scatter(
            [r[2] for r in chosen], ys, s=[30 + 30 * r[3] for r in chosen],
            c=[PASS if r[2] <= mark_minutes else "#ef6c00" for r in chosen],
            marker="o" if fixed else "x", alpha=0.8,
            label="fix verified" if fixed else "no verified fix",
        )  # fmt: skip
    _mark(ax, mark_minutes)
    ax.set_yticks(range(len(scenarios)), scenarios, fontsize=8)
    ax.set_ylim(len(scenarios) - 0.5, -0.5)
    ax.set_xlabel(
        f"program minutes to the accepted root cause, one dot per team ({len(rows)} results; "
        "larger: more hints)"
    )
    ax.legend(fontsize=7, loc="lower right")
    return Figure(name, caption, _png(figure), len(rows))


def _mark(ax: Axes, minutes: float) -> None:
    ax.axvline(minutes, color=FAIL, linestyle="--", linewidth=1.2)
    ax.annotate(
        f"{minutes:g}-minute mark (dark room)",
        (minutes, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(3, -10),
        textcoords="offset points",
        fontsize=7,
        color=FAIL,
    )
