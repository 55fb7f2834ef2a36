"""The report's sections, from what was gathered: text, KPIs, tables and plots.

Each section names its sources and says what it could not reach instead of failing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from drill.report import plots
from drill.report.analysis import (
    ORDERS_SUCCEEDED_MIN,
    Deploy,
    Stuck,
    active_view,
    deadlock_resolution,
    find_deploy,
    last_value,
    probes_around,
    stuck,
    value_at,
)
from drill.report.model import (
    Answer,
    Document,
    Figure,
    Gathered,
    Probe,
    Section,
    Series,
    Table,
    VerifyRun,
    epoch,
    from_epoch,
)
from drill.report.probe import READERS
from drill.report.prom import CENT, QUERIES

TIMELINE_ROUTE = "GET /feed/{user_id}"
# The journal's kinds listed in the timeline's table (the plot shows every kind).
LISTED_KINDS = {
    "program_started",
    "program_stopped",
    "phase_changed",
    "hint_released",
    "reveal_changed",
    "verify_run",
    "claim_filed",
    "claim_judged",
    "verify_submitted",
}
MAX_LISTED = 120


def clock(when: datetime | None) -> str:
    return "-" if when is None else when.strftime("%H:%M:%S")


def number(value: float, digits: int = 3) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def percent(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.1f}%"


def span(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _series(answers: dict[str, Answer], name: str) -> Series | None:
    answer = answers.get(name)
    return answer.one() if answer is not None else None


def _scaled(series: Series | None, factor: float) -> Series | None:
    if series is None:
        return None
    return Series(series.labels, series.times, tuple(v * factor for v in series.values))


def _metrics(
    data: Gathered, rows: Sequence[tuple[str, str, str, float]], finite_only: bool = False
) -> list[plots.Metric]:
    """A panel for each (query, title, unit, scale) that Prometheus answered (finite_only: with
    at least one finite value)."""
    metrics = []
    for name, title, unit, factor in rows:
        series = _scaled(_series(data.answers, name), factor)
        if series is not None and (series.finite() or not finite_only):
            metrics.append(plots.Metric(title, unit, ((title, series),)))
    return metrics


def _prometheus_notes(data: Gathered, section: Section, names: Sequence[str]) -> None:
    if data.prometheus_problem:
        section.missing.append(f"{data.prometheus_problem}: no metrics over time.")
        return
    section.sources.append(
        f"Prometheus at {data.prometheus_url}: " + "; ".join(f"`{QUERIES[n]}`" for n in names)
    )
    for name in names:
        answer = data.answers.get(name)
        if answer is None or answer.error:
            why = answer.error if answer is not None else "not asked"
            section.missing.append(f"Prometheus could not answer `{QUERIES[name]}`: {why}.")
        elif not answer.points():
            section.missing.append(f"`{QUERIES[name]}` has no data in the window.")


def _runs_note(data: Gathered, section: Section, scenario: str) -> list[VerifyRun]:
    runs = [r for r in data.runs if r.scenario == scenario]
    section.sources.append(
        f"verify runs: {data.state_dir / 'runs'}/*/result.json ({len(runs)} of {scenario} "
        "in the window)"
    )
    if not runs:
        section.missing.append(f"no `drill verify {scenario}` run in the window.")
    return runs


def _deploy_note(section: Section, deploy: Deploy) -> None:
    when = f"at {clock(deploy.at)} UTC: " if deploy.at else ""
    section.paragraphs.append(f"The fix's deploy: {when}{deploy.how}.")


def _add_figure(section: Section, figure: Figure | None, why_none: str = "") -> None:
    """The figure into the section; where there is none, why_none (if given) into its notes."""
    if figure is not None:
        section.figures.append(figure)
    elif why_none:
        section.missing.append(why_none)


@dataclass(frozen=True)
class _Drill:
    """A drill's section and what it is drawn from: the gathered data and the fix's deploy."""

    data: Gathered
    section: Section
    deploy: Deploy

    def panels(
        self,
        caption: str,
        rows: Sequence[tuple[str, str, str, float]],
        first: Sequence[plots.Metric] = (),
        shade: tuple[datetime, datetime] | None = None,
        shade_label: str = "",
    ) -> None:
        """The drill's metrics on stacked panels over the window, named for its section, the
        fix's deploy dashed (the caption says so): the first ones given, then those of rows (as
        in _metrics). No figure when none of them has data."""
        data, deploy = self.data, self.deploy
        metrics = [*first, *_metrics(data, rows)]
        marks = [(deploy.scenario, deploy.at)] if deploy.at else []
        caption += "; the fix's deploy dashed."
        window = data.view or data.window
        figure = plots.panels(self.section.id, caption, window, metrics, marks, shade, shade_label)
        _add_figure(self.section, figure)


def _before_after(
    caption: str, deploy: Deploy, figures: Sequence[tuple[str, str]], name: str
) -> Table:
    """A table of figures from the last run that showed the defect before the fix and the
    first run without it after the fix."""
    before, after = deploy.before, deploy.after
    headers = ("figure", f"before: {_run_label(before)}", f"after: {_run_label(after)}")
    rows = tuple(
        (
            label,
            number(before.figure(key)) if before else "-",
            number(after.figure(key)) if after else "-",
        )
        for key, label in figures
    )
    return Table(caption, headers, rows, name)


def _run_label(run: VerifyRun | None) -> str:
    return "no run" if run is None else f"run {clock(run.started)} ({run.verdict})"


def _samples(run: VerifyRun | None, request: str) -> list[float]:
    """The run's request latencies (ms) for one request name, after its warm-up."""
    if run is None:
        return []
    from drill.verify import read_samples

    judged_from = run.load_started + run.warmup_seconds
    return [
        s.ms
        for s in read_samples(run.directory / "samples.tsv")
        if s.request == request and (s.started is None or s.started >= judged_from)
    ]


# -- the timeline --------------------------------------------------------------------------------


# What the timeline says of each kind of journal event; a missing field reads "None".
_EVENT_TEXT = {
    "verify_run": "verify {scenario}: {verdict}",
    "hint_released": "hint {hint} of {scenario} released to the room",
    "claim_filed": "{team} claims a root cause on {scenario}: {text}",
    "claim_judged": "claim {claim} of {team} on {scenario}: {verdict}",
    "verify_submitted": "{team} submitted a verify run of {scenario}: {verdict}",
    "reveal_changed": "reveal mode {reveal}",
    "program_started": "the program started (seed {seed})",
    "program_stopped": "the program stopped ({reason})",
}


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> None:
        return None


def _describe(kind: str, fields: dict[str, object]) -> str:
    if kind == "phase_changed":
        return f"{fields.get('type', 'phase')}: {fields.get('entry') or 'the end of the agenda'}"
    text = _EVENT_TEXT.get(kind)
    return kind if text is None else text.format_map(_Fields(fields))


def timeline_section(data: Gathered, deploys: dict[str, Deploy]) -> Section:
    section = Section("timeline", "The timeline")
    journal = data.state_dir / "program" / "journal.jsonl"
    # Written as they happened, but by several writers: order them for the reader.
    shown = sorted((e for e in data.events if data.window.holds(e.ts)), key=lambda e: e.ts)
    if data.journal_found:
        section.sources.append(
            f"journal: {journal} ({len(shown)} of {len(data.events)} events in the window)"
        )
    else:
        section.missing.append(
            f"no journal at {journal}: no program ran on this machine; "
            "verify runs are drawn from their result files."
        )
    section.missing.extend(data.journal_notes)
    section.sources.append(
        f"verify runs: {data.state_dir / 'runs'}/*/result.json ({len(data.runs)} in the window)"
    )
    section.missing.extend(data.run_notes)
    keys = (
        ("ledger.gap", "ledger: largest gap, served balance vs recount", "amount", 1.0),
        ("chain.completed", "chain: orders completed per second", "orders/s", 1.0),
        ("feed.p95", "feed: timeline p95", "ms", 1000.0),
    )
    metrics = _metrics(data, keys, finite_only=True)
    _prometheus_notes(data, section, [k[0] for k in keys])
    marks = [(name, d.at) for name, d in deploys.items() if d.at is not None]
    figure = plots.timeline(data.view or data.window, data.events, data.runs, metrics, marks)
    _add_figure(
        section, figure, "nothing to draw: no journal events, verify runs or metrics in the window."
    )
    counts = Counter(e.kind for e in shown)
    if counts:
        section.paragraphs.append(
            "Events in the window: "
            + ", ".join(f"{kind} {n}" for kind, n in counts.most_common())
            + "."
        )
    listed = [e for e in shown if e.kind in LISTED_KINDS]
    rows = tuple(
        (clock(e.ts), e.by, _describe(e.kind, dict(e.fields))) for e in listed[:MAX_LISTED]
    )
    if rows:
        more = f" (the first {MAX_LISTED} of {len(listed)})" if len(listed) > MAX_LISTED else ""
        section.tables.append(
            Table(f"What happened, UTC{more}", ("time", "by", "event"), rows, "events")
        )
    section.tables.append(
        Table(
            "Each drill's deploy (how the report places it: docs/instructor-guide.md)",
            ("scenario", "deployed (UTC)", "how the report knows"),
            tuple((name, clock(d.at), d.how) for name, d in deploys.items()),
            "deploys",
        )
    )
    return section


# -- the ledger ----------------------------------------------------------------------------------


def _widest_currency(data: Gathered) -> tuple[str, Series, Series] | None:
    served = {s.labels.get("currency", "?"): s for s in _all(data, "ledger.served")}
    recount = {s.labels.get("currency", "?"): s for s in _all(data, "ledger.recount")}
    best: tuple[float, str] | None = None
    for currency in served.keys() & recount.keys():
        counted = dict(recount[currency].finite())
        gaps = [abs(v - counted[t]) for t, v in served[currency].finite() if t in counted]
        if gaps and (best is None or max(gaps) > best[0]):
            best = (max(gaps), currency)
    if best is None:
        return None
    return best[1], served[best[1]], recount[best[1]]


def _all(data: Gathered, name: str) -> tuple[Series, ...]:
    answer = data.answers.get(name)
    return answer.series if answer is not None else ()


def ledger_section(data: Gathered, deploy: Deploy) -> Section:
    section = Section("ledger", "Ledger (fp-drift)")
    names = [
        "ledger.served",
        "ledger.recount",
        "ledger.gap",
        "ledger.accuracy",
        "ledger.duplicates",
    ]
    _prometheus_notes(data, section, names)
    _runs_note(data, section, "fp-drift")
    _deploy_note(section, deploy)
    accuracy = _series(data.answers, "ledger.accuracy")
    now = last_value(accuracy)
    before = value_at(accuracy, epoch(deploy.at)) if deploy.at else math.nan
    accounts = last_value(_series(data.answers, "ledger.accounts"))
    section.kpis.append(
        (
            "FP drift accuracy",
            f"{percent(now)} now; {percent(before)} just before the fix",
            "the share of accounts whose served balance matches the auditor's exact recount to "
            f"the cent (|difference| < {CENT}), over {number(accounts)} account-currency pairs",
        )
    )
    balances = []
    widest = _widest_currency(data)
    if widest is not None:
        currency, served, recount = widest
        balances.append(
            plots.Metric(
                f"served balance vs the exact recount, {currency} (the widest gap's currency)",
                currency,
                (("served", served), ("recount", recount)),
            )
        )
    _Drill(data, section, deploy).panels(
        "Ledger: served balances against the recount, the largest gap, duplicate postings and "
        "the accuracy KPI",
        (
            ("ledger.gap", "largest gap between a served balance and its recount", "amount", 1),
            ("ledger.duplicates", "duplicates: postings sharing an idempotency key", "postings", 1),
            ("ledger.accuracy", "FP drift accuracy: accounts matching the recount", "%", 100),
        ),
        first=balances,
    )
    section.tables.append(
        _before_after(
            "Verify runs before and after the fix",
            deploy,
            (
                ("ledger.balance_drift", "balance drift (sum over accounts)"),
                ("ledger.duplicate_postings", "duplicate postings"),
                ("ledger.misbooked_postings", "misbooked postings"),
                ("ledger.unconfirmed_payments", "payments without a definite answer"),
                ("ledger.payments", "payments accepted"),
                ("p95_ms", "POST p95 (ms)"),
            ),
            "ledger-runs",
        )
    )
    return section


# -- the chain -----------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _p99_split(series: Series | None, deploy: datetime | None) -> tuple[float, float]:
    if series is None:
        return math.nan, math.nan
    points = series.finite()
    if deploy is None:
        return _median([v for _, v in points]), math.nan
    cut = epoch(deploy)
    return (_median([v for t, v in points if t < cut]), _median([v for t, v in points if t >= cut]))


def chain_section(data: Gathered, deploy: Deploy) -> Section:
    section = Section("chain", "Chain (circular-deadlock)")
    _prometheus_notes(data, section, ["chain.completed", "chain.waiting", "chain.p99"])
    runs = _runs_note(data, section, "circular-deadlock")
    _deploy_note(section, deploy)
    found: Stuck = stuck(
        data.answers.get("chain.completed"),
        data.answers.get("chain.waiting"),
        epoch(deploy.at) if deploy.at else None,
    )
    if found.first is None:
        stuck_text = "no stuck stretch seen (orders waiting while none completed over 30 s)"
    elif found.recovered is None:
        stuck_text = f"stuck from {clock(from_epoch(found.first))}; not recovered in the window"
    else:
        stuck_text = (
            f"{span(found.seconds)}: stuck from {clock(from_epoch(found.first))}, "
            f"orders completing again at {clock(from_epoch(found.recovered))}"
        )
    section.kpis.append(
        (
            "Time from the first stuck window to recovery",
            stuck_text,
            "Prometheus: orders waiting at chain-a while the completed-orders rate "
            "over 30 s is 0; recovery is the first completed order after it",
        )
    )
    p99 = _scaled(_series(data.answers, "chain.p99"), 1000.0)
    prom_before, prom_after = _p99_split(p99, deploy.at)
    run_before = deploy.before.figure("p99_ms") if deploy.before else math.nan
    run_after = deploy.after.figure("p99_ms") if deploy.after else math.nan
    section.kpis.append(
        (
            "Order p99 before and after the fix",
            f"{number(run_before)} ms → {number(run_after)} ms (verify runs); "
            f"{number(prom_before)} ms → {number(prom_after)} ms (Prometheus, median "
            "of the 30 s p99 before and after the deploy)",
            "a deadlocked chain completes few orders: its p99 rests on the ones that "
            "got through, and the checkout's 2 s timeout",
        )
    )
    resolution = deadlock_resolution(runs, deploy)
    after_prom = (
        ""
        if found.points_after_deploy is None
        else f"; Prometheus saw {found.points_after_deploy} stuck points after the deploy"
    )
    section.kpis.append(
        (
            "Deadlock resolution",
            resolution.verdict,
            "defined as: every judged verify run from the deploy on has 0 stuck 2 s windows and "
            f"orders_succeeded >= {ORDERS_SUCCEEDED_MIN}. {resolution.runs} run(s) after the "
            "deploy: "
            f"stuck windows {number(resolution.stuck_windows)}, orders succeeded at least "
            f"{percent(resolution.orders_succeeded)}{after_prom}",
        )
    )
    shade = None
    if found.first is not None:
        end = found.recovered if found.recovered is not None else epoch(data.window.end)
        shade = (from_epoch(found.first), from_epoch(end))
    _Drill(data, section, deploy).panels(
        "Chain: completed orders per second falling to zero while orders wait, and the recovery",
        (
            ("chain.completed", "orders completed per second (chain-a, 2xx)", "orders/s", 1),
            ("chain.waiting", "orders waiting for an answer (in flight at chain-a)", "orders", 1),
            ("chain.p99", "order latency p99 over 30 s", "ms", 1000),
        ),
        shade=shade,
        shade_label="stuck: orders waiting, none completing",
    )
    section.tables.append(
        _before_after(
            "Verify runs before and after the fix",
            deploy,
            (
                ("stuck_windows", "2 s windows with no completed order"),
                ("chain.orders_succeeded", "orders succeeded (share)"),
                ("hung_requests", "orders that hung until the 2 s timeout"),
                ("chain.unanswered_orders", "orders never answered"),
                ("p99_ms", "p99 (ms)"),
                ("throughput_rps", "orders per second"),
            ),
            "chain-runs",
        )
    )
    return section


# -- the feed ------------------------------------------------------------------------------------


def _probe_label(probe: Probe | None, side: str) -> str:
    return f"{side} ({clock(probe.at)})" if probe is not None else f"{side} (no probe)"


def feed_table(before: Probe | None, after: Probe | None) -> Table:
    """The seed's table: one row per reader (10, 100, 1,000 followees), before and after."""

    def row_of(probe: Probe | None, user_id: int) -> dict[str, str]:
        found = next((r for r in probe.rows if r.user_id == user_id), None) if probe else None
        if found is None:
            return dict.fromkeys(("statements", "calls", "p50", "p95"), "-")
        return {
            "statements": number(found.statements),
            "calls": number(found.calls),
            "p50": number(found.p50_ms),
            "p95": number(found.p95_ms),
        }

    rows = []
    for user_id, seeded in READERS:
        followees = seeded
        for probe in (after, before):
            match = next((r for r in probe.rows if r.user_id == user_id), None) if probe else None
            if match is not None:
                followees = match.followees
        b, a = row_of(before, user_id), row_of(after, user_id)
        rows.append(
            (
                f"{followees:,} (user {user_id})",
                b["statements"],
                a["statements"],
                b["calls"],
                a["calls"],
                b["p50"],
                a["p50"],
                b["p95"],
                a["p95"],
            )
        )
    headers = (
        "followees",
        "statements/request before",
        "after",
        "external calls/request before",
        "after",
        "p50 ms before",
        "after",
        "p95 ms before",
        "after",
    )
    caption = (
        f"The seed's table, measured by the report's probe: {_probe_label(before, 'before')}"
        f", {_probe_label(after, 'after')}"
    )
    return Table(caption, headers, tuple(rows), "feed-probe")


def _probe_notes(section: Section, before: Probe | None, after: Probe | None) -> None:
    for side, probe in (("before", before), ("after", after)):
        if probe is None:
            continue
        flags = ", ".join(f"{k}={v}" for k, v in sorted(probe.flags.items())) or "none"
        busy = [r for r in probe.rows if r.observed > r.reads]
        extra = (
            " Other readers were reading meanwhile, so its per-request counts average over "
            f"{', '.join(str(r.observed) for r in busy)} requests."
            if busy
            else ""
        )
        reads = probe.rows[0].reads if probe.rows else 0
        section.paragraphs.append(
            f"Probe {side} ({clock(probe.at)}, {probe.url}): {reads} reads per reader, one after "
            f"the other; feed and profiles flags live: {flags}.{extra}"
        )


def feed_section(data: Gathered, deploy: Deploy) -> Section:
    section = Section("feed", "Feed (n-plus-one)")
    runs_path = data.state_dir / "report" / "feed-probes.jsonl"
    section.sources.append(
        f"the report's probe of the running feed (kept in {runs_path}; "
        f"{len(data.probes)} in the window)"
    )
    if data.probe_problem:
        section.missing.append(data.probe_problem)
    _prometheus_notes(data, section, ["feed.p95", "feed.statements", "feed.calls"])
    _runs_note(data, section, "n-plus-one")
    _deploy_note(section, deploy)
    before, after = probes_around(data.probes, deploy.at)
    if deploy.at is None and after is not None:
        section.missing.append(
            "no deploy of the fix is known, so the latest probe is shown as "
            "'after' and there is no 'before'."
        )
    elif before is None:
        section.missing.append(
            "no probe was kept from before the fix: run `drill report` while "
            "the drill is live to keep one."
        )
    if deploy.at is not None and after is None:
        section.missing.append(
            "no probe since the fix's deploy (the feed was not reachable, or --no-probe)."
        )
    section.tables.append(feed_table(before, after))
    _probe_notes(section, before, after)
    section.tables.append(
        _before_after(
            "Verify runs before and after the fix (every reader under load)",
            deploy,
            (
                ("feed.db_queries_per_request_mean", "statements per request (mean)"),
                ("feed.db_queries_per_request_max", "statements per request (highest bucket)"),
                ("feed.external_calls_per_request_mean", "external calls per request (mean)"),
                (
                    "feed.external_calls_per_request_max",
                    "external calls per request (highest bucket)",
                ),
                ("p50_ms", "p50 (ms)"),
                ("p95_ms", "p95 (ms)"),
                ("hung_requests", "reads that hit the 10 s timeout"),
            ),
            "feed-runs",
        )
    )
    groups = [
        (f"{side}: {_run_label(run)}", _samples(run, TIMELINE_ROUTE))
        for side, run in (("before", deploy.before), ("after", deploy.after))
        if run is not None
    ]
    histogram = plots.latency_histogram(
        "feed-latency",
        "Feed: the distribution of timeline latency in the verify runs before "
        "and after the fix (raw samples).",
        groups,
    )
    _add_figure(
        section,
        histogram,
        "no verify-run samples of `GET /feed/{user_id}` to draw the latency distribution from.",
    )
    _Drill(data, section, deploy).panels(
        "Feed: timeline latency and the work per timeline over time",
        (
            ("feed.p95", "timeline p95 over a minute", "ms", 1000),
            ("feed.statements", "SQL statements per timeline (1-minute mean)", "statements", 1),
            ("feed.calls", "external calls per timeline (mean over a minute)", "calls", 1),
        ),
    )
    _waterfall(data, section, deploy, before, after)
    return section


def _waterfall(
    data: Gathered, section: Section, deploy: Deploy, before: Probe | None, after: Probe | None
) -> None:
    """Two real traces from Jaeger, else the round trips the measured counts imply."""
    chosen = []
    if data.traces:
        cut = deploy.at
        early = [t for t in data.traces if cut is None or t.started < cut]
        late = [t for t in data.traces if cut is not None and t.started >= cut]
        # The slowest-looking trace before (the most spans: the ladder), the latest after.
        for label, pool, pick in (
            ("before the fix", early, lambda t: len(t.spans)),
            ("after the fix", late, lambda t: t.started.timestamp()),
        ):
            if pool:
                trace = max(pool, key=pick)
                chosen.append(
                    (f"{label}: trace {trace.trace_id[:12]}… at {clock(trace.started)}", trace)
                )
        section.sources.append(
            f"traces: Jaeger at {data.jaeger_url} ({len(data.traces)} timeline traces)"
        )
    figure = plots.waterfalls(
        "feed-waterfall",
        "Feed: one timeline trace before the fix and one after, as span waterfalls (Jaeger).",
        chosen,
    )
    if figure is not None:
        section.figures.append(figure)
        return
    why = data.traces_problem or f"Jaeger at {data.jaeger_url} had no timeline traces"
    section.missing.append(
        f"{why}: the waterfall below is reconstructed from measured counts, not from traces."
    )
    sides = []
    heavy = READERS[-1][0]
    for label, probe in (("before the fix", before), ("after the fix", after)):
        row = next((r for r in probe.rows if r.user_id == heavy), None) if probe else None
        if row is not None:
            sides.append(
                (
                    f"{label}, probe of user {heavy} ({row.followees:,} followees)",
                    row.statements,
                    row.calls,
                )
            )
    if not sides:
        for label, run in (("before the fix", deploy.before), ("after the fix", deploy.after)):
            if run is not None:
                sides.append(
                    (
                        f"{label}, verify run {clock(run.started)} (mean of every reader)",
                        run.figure("feed.db_queries_per_request_mean"),
                        run.figure("feed.external_calls_per_request_mean"),
                    )
                )
    reconstructed = plots.round_trips(
        "feed-waterfall",
        "Feed: RECONSTRUCTED, not traced: the round trips one timeline makes "
        "(statements, then profile calls) from the measured per-request counts, before and after "
        "the fix. The x axis is their order, not time.",
        sides,
    )
    _add_figure(
        section,
        reconstructed,
        "no per-request counts (probe or verify run) to reconstruct the waterfall from.",
    )


# -- the teams -----------------------------------------------------------------------------------


def teams_section(data: Gathered) -> Section:
    section = Section("teams", "Teams")
    database = data.state_dir / "program" / "workshop.db"
    section.sources.append(f"the teams' store: {database} (drill.program.scoreboard.board)")
    if data.board is None:
        section.missing.append(data.board_problem or f"no teams' store at {database}")
        return section
    mark = data.dark_room_minutes
    rows, bars = [], []
    for team in data.board.get("teams", []):
        for name, result in team.get("scenarios", {}).items():
            minutes = result.get("minutes_to_root_cause")
            rows.append(
                (
                    team["team"],
                    name,
                    "-" if minutes is None else f"{minutes:g}",
                    "-" if minutes is None else ("yes" if result.get("in_dark_room") else "no"),
                    str(result.get("hints_used", 0)),
                    result.get("fix_verified_at") or "-",
                    str(result.get("points", 0)),
                )
            )
            if minutes is not None:
                bars.append(
                    (
                        str(team["team"]),
                        name,
                        float(minutes),
                        int(result.get("hints_used", 0)),
                        bool(result.get("fix_verified_at")),
                    )
                )
        if not team.get("scenarios"):
            rows.append((team["team"], "-", "-", "-", "0", "-", str(team.get("points", 0))))
    if not rows:
        section.missing.append("the teams' store holds no teams.")
        return section
    section.tables.append(
        Table(
            f"Per team and scenario (program minutes; the dark room's mark is {mark:g} minutes)",
            (
                "team",
                "scenario",
                "minutes to root cause",
                f"within {mark:g} min",
                "hints used",
                "fix verified (UTC)",
                "points",
            ),
            tuple(rows),
            "teams",
        )
    )
    figure = plots.teams(
        "teams",
        f"Teams: time to root cause against the {mark:g}-minute mark; "
        "hints used and verified fixes on each bar.",
        bars,
        mark,
    )
    _add_figure(section, figure, "no accepted root-cause claim yet: nothing to draw.")
    return section


def build(data: Gathered, generated: datetime) -> tuple[Document, dict[str, Deploy]]:
    data.view = active_view(data)
    deploys = {
        name: find_deploy(name, data.runs, data.restarts, services)
        for name, services in data.scenario_services.items()
    }
    empty = Deploy("", None, "no such scenario in scenarios.yaml", None, None)
    sections = (
        timeline_section(data, deploys),
        ledger_section(data, deploys.get("fp-drift", empty)),
        chain_section(data, deploys.get("circular-deadlock", empty)),
        feed_section(data, deploys.get("n-plus-one", empty)),
        teams_section(data),
    )
    return Document("3 A.M. Drill: the debrief", generated, data.window, sections), deploys
