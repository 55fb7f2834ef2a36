"""What the report concludes from what it gathered: deploys, stuck stretches and the KPIs.

Pure functions over drill.report.model; no I/O, no plotting.

**The deploy** of a drill's fix is when the patched service started. A verify run either
showed the defect (a check failed that is not only about having enough to judge) or did not.
The report takes the last restart of one of the scenario's services (Prometheus's
`process_start_time_seconds`, or the native lab's run files) between the last run that showed
the defect and the first clean run after it. Without a restart seen there, that first clean run
stands in for it. With only runs that showed the defect, a restart after the last of them is
the deploy (not verified yet); with none that showed it there is no "before", and no deploy.
A clean run need not pass: a short run of fixed code fails "enough traffic to judge".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from drill.report.model import (
    Answer,
    Gathered,
    Probe,
    Restart,
    Series,
    VerifyRun,
    Window,
    from_epoch,
)

# The deadlock-resolution KPI: every judged run after the fix has no 2 s window without a
# completed order, and at least this share of orders succeed (the scenario's own SLA).
ORDERS_SUCCEEDED_MIN = 0.99


# Checks on whether a run had enough to judge, not on the defect: a short run of the fixed
# code fails them and is still a run without the defect.
SUFFICIENCY_FIGURES = frozenset(
    {"requests", "ledger.payments", "ledger.retried_payments", "feed.reads_checked"}
)


def sufficiency(figure: str) -> bool:
    return figure in SUFFICIENCY_FIGURES or (
        figure.startswith("trigger.") and figure.endswith(".acted")
    )


def showed_defect(run: VerifyRun) -> bool:
    """Whether an invariant failed: the defect itself, not the amount of traffic, and not a
    latency bound, which depends on how busy the machine was as much as on the code."""
    return any(
        not check.get("passed")
        and check.get("kind", "invariant") != "latency"
        and not sufficiency(str(check.get("figure", "")))
        for check in run.checks
    ) or (not run.passed and not run.checks)


@dataclass(frozen=True)
class Deploy:
    """When a drill's fix went in, how the report knows, and the runs on either side."""

    scenario: str
    at: datetime | None
    how: str
    before: VerifyRun | None  # the last run that showed the defect, before the deploy
    after: VerifyRun | None  # the first run without it, after the deploy


def _clock(when: datetime) -> str:
    return when.strftime("%H:%M:%S UTC")


def find_deploy(
    scenario: str, runs: Sequence[VerifyRun], restarts: Iterable[Restart], services: Sequence[str]
) -> Deploy:
    judged = sorted(
        (r for r in runs if r.scenario == scenario and not r.baseline), key=lambda r: r.started
    )
    ours = sorted((r for r in restarts if r.service in services), key=lambda r: r.at)
    bad = [showed_defect(r) for r in judged]
    first_clean = next((i for i, r in enumerate(judged) if not bad[i] and any(bad[:i])), None)
    if first_clean is not None:
        after = judged[first_clean]
        before = [r for i, r in enumerate(judged[:first_clean]) if bad[i]][-1]
        between = [r for r in ours if before.finished < r.at <= after.started]
        if between:
            last = between[-1]
            how = (
                f"{last.service} restarted at {_clock(last.at)} ({last.source}), between the "
                f"last verify run that showed the defect ({_clock(before.started)}) and the "
                f"first without it ({_clock(after.started)})"
            )
            return Deploy(scenario, last.at, how, before, after)
        how = (
            f"the first verify run without the defect ({_clock(after.started)}): no restart of "
            f"{', '.join(services)} was seen after the last one that showed it"
        )
        return Deploy(scenario, after.started, how, before, after)
    shown = [r for i, r in enumerate(judged) if bad[i]]
    if shown:
        later = [r for r in ours if r.at > shown[-1].finished]
        if later:
            how = (
                f"{later[0].service} restarted at {_clock(later[0].at)} ({later[0].source}) "
                "after the last verify run that showed the defect; no run since"
            )
            return Deploy(scenario, later[0].at, how, shown[-1], None)
        how = "every verify run showed the defect: no fix deployed yet"
        return Deploy(scenario, None, how, shown[-1], None)
    if judged:
        how = "no verify run showed the defect: there is no 'before' to compare against"
        return Deploy(scenario, None, how, None, judged[0])
    return Deploy(scenario, None, "no verify run of this scenario in the window", None, None)


def value_at(series: Series | None, when: float, *, before: bool = True) -> float:
    """The series' last finite value at or before `when` (or first at or after it)."""
    if series is None:
        return math.nan
    points = series.finite()
    if before:
        earlier = [v for t, v in points if t <= when]
        return earlier[-1] if earlier else math.nan
    later = [v for t, v in points if t >= when]
    return later[0] if later else math.nan


def last_value(series: Series | None) -> float:
    points = series.finite() if series is not None else []
    return points[-1][1] if points else math.nan


@dataclass(frozen=True)
class Stuck:
    """The chain's stuck stretch seen by Prometheus: orders waiting, none completing."""

    first: float | None  # epoch seconds of the first stuck point
    recovered: float | None  # the first point after it with orders completing again
    points: int  # stuck points in the whole window
    points_after_deploy: int | None

    @property
    def seconds(self) -> float | None:
        if self.first is None or self.recovered is None:
            return None
        return self.recovered - self.first


def _points(answer: Answer | None) -> dict[float, float]:
    series = answer.one() if answer is not None else None
    return dict(series.finite()) if series is not None else {}


def stuck(completed: Answer | None, waiting: Answer | None, deploy: float | None) -> Stuck:
    done = _points(completed)
    queue = _points(waiting)
    times = sorted(set(done) & set(queue))
    stuck_at = [t for t in times if queue[t] > 0 and done[t] == 0]
    first = stuck_at[0] if stuck_at else None
    recovered = None
    if first is not None:
        recovered = next((t for t in times if t > first and done[t] > 0), None)
    after = None if deploy is None else sum(t >= deploy for t in stuck_at)
    return Stuck(first, recovered, len(stuck_at), after)


@dataclass(frozen=True)
class Resolution:
    """The deadlock-resolution KPI and what it rests on."""

    verdict: str  # "resolved", "not resolved" or "unknown"
    runs: int
    stuck_windows: float
    orders_succeeded: float


def deadlock_resolution(runs: Sequence[VerifyRun], deploy: Deploy) -> Resolution:
    """Resolved when every judged chain run from the deploy on has no stuck window and at
    least 99% of its orders succeeded; unknown without such a run."""
    if deploy.at is None:
        return Resolution("unknown", 0, math.nan, math.nan)
    after = [
        r
        for r in runs
        if r.scenario == deploy.scenario and not r.baseline and r.started >= deploy.at
    ]
    if not after:
        return Resolution("unknown", 0, math.nan, math.nan)
    windows = sum(r.figure("stuck_windows") for r in after)
    succeeded = min(r.figure("chain.orders_succeeded") for r in after)
    resolved = windows == 0 and succeeded >= ORDERS_SUCCEEDED_MIN
    return Resolution("resolved" if resolved else "not resolved", len(after), windows, succeeded)


def probes_around(
    probes: Sequence[Probe], deploy: datetime | None
) -> tuple[Probe | None, Probe | None]:
    """(the last probe before the deploy, the last one after it); without a deploy, the last
    probe is "now" and there is no before."""
    if not probes:
        return None, None
    if deploy is None:
        return None, probes[-1]
    before = [p for p in probes if p.at < deploy]
    after = [p for p in probes if p.at >= deploy]
    return (before[-1] if before else None), (after[-1] if after else None)


def active_view(data: Gathered) -> Window:
    """The window's stretch from its first event, run or data point to its end (with a small
    margin), so a lab that ran for minutes is not a sliver at the edge of a 3-hour axis."""
    window = data.window
    starts = [e.ts for e in data.events if window.holds(e.ts)]
    starts += [max(r.started, window.start) for r in data.runs]
    starts += [p.at for p in data.probes]
    for name, answer in data.answers.items():
        if name == "restarts":
            continue  # a service's start time says nothing about when anything happened
        firsts = [s.finite()[0][0] for s in answer.series if s.finite()]
        starts += [from_epoch(min(firsts))] if firsts else []
    if not starts:
        return window
    first = max(min(starts), window.start)
    margin = max(timedelta(seconds=30), (window.end - first) * 0.03)
    return Window(max(window.start, first - margin), window.end)
