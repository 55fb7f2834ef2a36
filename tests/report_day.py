"""A workshop day for the report's tests and benchmark, written through the lab's own code.

The journal through drill.program.journal.Journal, the teams through drill.program.teams.
Workshop, the verify runs as drill.verify.VerifyResult JSON with their samples.tsv, the feed
probes through drill.report.probe.keep. Prometheus gets the day in two forms: range-query
answers in the HTTP API's JSON (for a stub server), and OpenMetrics text of the raw series
for `promtool tsdb create-blocks-from openmetrics` (for a real Prometheus on the backfill).

Every drill runs in this day: each scenario's triggers go on at 0:15; the shipped chain sticks
at 0:20; each fix is deployed (its services restart) at 2:10 of a 3-hour day, between failing
verify runs before and passing ones after. A shorter day is the same day scaled.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from drill.program.journal import Journal, journal_path
from drill.program.teams import Workshop
from drill.report.model import Probe, ProbeRow
from drill.report.probe import keep
from drill.report.prom import QUERIES
from drill.scenarios import Program, load_program
from drill.verify import VerifyResult, check_result
from tests.conftest import REPO_ROOT
from tests.servers import QuietHandler, serving

FULL_DAY_S = 3 * 3600.0
SCENARIOS = ("fp-drift", "circular-deadlock", "n-plus-one")
TEAMS = ("red", "blue", "green")


@dataclass(frozen=True)
class Day:
    """A day of `seconds` ending at `end`; program times scale from the 3-hour agenda."""

    end: datetime
    seconds: float = FULL_DAY_S
    accounts: int = 40
    teams: tuple[str, ...] = TEAMS
    filler_events: int = 0
    program: Program = field(default_factory=lambda: load_program(REPO_ROOT / "scenarios.yaml"))

    @property
    def start(self) -> datetime:
        return self.end - timedelta(seconds=self.seconds)

    def at(self, program_seconds: float) -> datetime:
        """The wall time of a program time (H:MM of the 3-hour agenda), scaled to this day."""
        return self.start + timedelta(seconds=program_seconds * self.seconds / FULL_DAY_S)

    @property
    def deploy(self) -> datetime:
        return self.at(2 * 3600 + 600)

    @property
    def stuck_from(self) -> datetime:
        return self.at(20 * 60)

    @property
    def triggers_on(self) -> datetime:
        return self.at(15 * 60)


# -- the journal, the teams and the verify runs ----------------------------------------------------


def write_day(state: Path, day: Day) -> None:
    """The journal, the teams' store, the verify runs and the feed probes of the day."""
    journal = Journal(journal_path(state))
    program = day.program
    journal.append("program_started", "instructor", day.at(0), seed=7, clock={})
    for index, entry in enumerate(program.agenda):
        kind = "break" if "break" in type(entry).__name__.lower() else "phase"
        journal.append(
            "phase_changed",
            "runner",
            day.at(entry.start),
            index=index,
            entry=entry.name,
            type=kind,
            at="",
        )
    for name in SCENARIOS:
        for trigger in program.scenarios[name].triggers:
            journal.append(
                "flag_changed",
                "runner",
                day.triggers_on,
                flag=trigger.flag,
                variant=trigger.variant,
                percent=trigger.percent,
                layer="program",
            )
            journal.append(
                "flag_changed",
                "runner",
                day.at(FULL_DAY_S - 1),
                flag=trigger.flag,
                variant="off",
                percent=None,
                layer="program",
            )
    for hint, at in ((1, 80 * 60), (2, 95 * 60), (3, 120 * 60)):
        for name in SCENARIOS:
            journal.append(
                "hint_released",
                "runner",
                day.at(at),
                scenario=name,
                hint=hint,
                text=program.scenarios[name].hints[hint - 1],
                at="",
            )
    journal.append("reveal_changed", "runner", day.at(150 * 60), reveal="on")
    _teams(state, day, journal)
    for name in SCENARIOS:
        for minutes, passed in ((90, False), (105, False), (135, True), (145, True)):
            write_run(state, day, name, day.at(minutes * 60), passed, journal)
    for filler in range(day.filler_events):
        # Decoys flipping on bystanders all day: most of a long journal's lines.
        journal.append(
            "flag_changed",
            "runner",
            day.at(900 + filler * (9000 / max(1, day.filler_events))),
            flag="generic.latency",
            variant="on" if filler % 2 else "off",
            percent=20.0,
            layer="program",
            where={"service": "profiles"},
        )
    journal.append("program_stopped", "runner", day.at(FULL_DAY_S - 1), reason="finished")
    write_probes(state, day)


def _teams(state: Path, day: Day, journal: Journal) -> None:
    workshop = Workshop(state / "program", day.program, journal)
    workshop.add_teams(list(day.teams))
    workshop.note_live(list(SCENARIOS), 900.0, day.triggers_on)
    chance = random.Random(3)
    for number, team in enumerate(day.teams):
        for name in SCENARIOS:
            minutes = 15 + 6 * (number % 8) + chance.randint(5, 25)
            if number % 2:
                workshop.unlock_hint(team, name, [], now=day.at(minutes * 60 - 120))
            claim = workshop.file_claim(
                team,
                name,
                f"{team} found it",
                [],
                None,
                list(SCENARIOS),
                {},
                program_at=float(minutes * 60),
                now=day.at(minutes * 60),
            )
            workshop.judge(claim.id, "accept", "", now=day.at(minutes * 60 + 60))
            checks = [
                {
                    "name": "fixed",
                    "figure": "stuck_windows",
                    "kind": "invariant",
                    "value": 0.0,
                    "passed": True,
                }
            ]
            workshop.submit_verify(
                team,
                {"scenario": name, "passed": True, "checks": checks, "baseline": False},
                now=day.at(140 * 60 + number * 60),
            )


# Figures of a failing (shipped) and a passing (fixed) run, as the collectors name them.
FIGURES: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "fp-drift": (
        {
            "ledger.balance_drift": 3.21,
            "ledger.duplicate_postings": 14.0,
            "ledger.misbooked_postings": 0.0,
            "ledger.unconfirmed_payments": 0.0,
            "ledger.retried_payments": 15.0,
            "ledger.payments": 1100.0,
            "p95_ms": 36.0,
        },
        {
            "ledger.balance_drift": 0.0,
            "ledger.duplicate_postings": 0.0,
            "ledger.misbooked_postings": 0.0,
            "ledger.unconfirmed_payments": 0.0,
            "ledger.retried_payments": 16.0,
            "ledger.payments": 1080.0,
            "p95_ms": 41.0,
        },
    ),
    "circular-deadlock": (
        {
            "stuck_windows": 14.0,
            "chain.orders_succeeded": 0.29,
            "hung_requests": 250.0,
            "chain.unanswered_orders": 0.0,
            "p99_ms": 2011.0,
            "throughput_rps": 8.8,
            "chain.orders_after_load": 0.0,
        },
        {
            "stuck_windows": 0.0,
            "chain.orders_succeeded": 1.0,
            "hung_requests": 0.0,
            "chain.unanswered_orders": 0.0,
            "p99_ms": 390.0,
            "throughput_rps": 27.5,
            "chain.orders_after_load": 1.0,
        },
    ),
    "n-plus-one": (
        {
            "feed.db_queries_per_request_mean": 412.0,
            "feed.db_queries_per_request_max": 2000.0,
            "feed.external_calls_per_request_mean": 10.0,
            "feed.external_calls_per_request_max": 10.0,
            "p50_ms": 10004.0,
            "p95_ms": 11053.0,
            "hung_requests": 20.0,
        },
        {
            "feed.db_queries_per_request_mean": 2.0,
            "feed.db_queries_per_request_max": 2.0,
            "feed.external_calls_per_request_mean": 0.4,
            "feed.external_calls_per_request_max": 1.0,
            "p50_ms": 121.0,
            "p95_ms": 174.0,
            "hung_requests": 0.0,
        },
    ),
}
REQUESTS = {
    "fp-drift": ("POST", "/transactions", 30.0, 3000.0),
    "circular-deadlock": ("POST", "/orders", 180.0, 2000.0),
    "n-plus-one": ("GET", "/feed/{user_id}", 120.0, 10000.0),
}


def write_run(
    state: Path, day: Day, name: str, started: datetime, passed: bool, journal: Journal
) -> Path:
    """One verify run: result.json (a real VerifyResult), samples.tsv and locust-started."""
    scenario = day.program.scenarios[name]
    run_id = f"{name}-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    directory = state / "runs" / run_id
    directory.mkdir(parents=True)
    seconds = min(scenario.load.duration, 20.0)
    load_started = started.timestamp() + 1.0
    (directory / "locust-started").write_text(f"{load_started:.3f}")
    method, route, fast_ms, slow_ms = REQUESTS[name]
    chance = random.Random(run_id)
    lines = []
    for index in range(400):
        slow = not passed and chance.random() < 0.6
        ms = (
            slow_ms * chance.uniform(0.95, 1.0) if slow else fast_ms * chance.lognormvariate(0, 0.4)
        )
        begun = load_started + seconds * index / 400
        lines.append(f"{method}\t{route}\t{ms:.1f}\t{0 if slow else 1}\t{begun:.3f}")
    (directory / "samples.tsv").write_text("\n".join(lines) + "\n")
    figures = dict(FIGURES[name][1 if passed else 0])
    checks = []
    for check in scenario.sla:
        value = figures.get(check.figure, 1.0 if passed else math.nan)
        # The check as verify records it, with the day's verdict rather than one from the value:
        # a failing run misses only the checks on the figures it has failing values for.
        ok = passed or check.figure not in FIGURES[name][0]
        checks.append(replace(check_result(check, value), passed=ok))
    result = VerifyResult(
        scenario=name,
        baseline=False,
        passed=passed,
        started_at=started.isoformat(timespec="seconds"),
        load_seconds=seconds,
        users=scenario.load.users,
        run_dir=str(directory),
        checks=checks,
        figures=figures,
        warmup_seconds=0.0,
    )
    (directory / "result.json").write_text(result.to_json())
    journal.append(
        "verify_run",
        f"verify {name}",
        started + timedelta(seconds=seconds + 5),
        scenario=name,
        verdict="pass" if passed else "fail",
        result=str(directory / "result.json"),
    )
    return directory


def write_probes(state: Path, day: Day) -> None:
    """A probe while the drill was live (before the fix) and one after the deploy."""
    shipped = (
        (3, 10, 22.0, 10.0, 1074.0, 1139.0),
        (2, 100, 112.0, 10.0, 1120.0, 1199.0),
        (1, 1000, 1012.0, 10.0, 1653.0, 1789.0),
    )
    fixed = (
        (3, 10, 2.0, 0.0, 3.7, 6.6),
        (2, 100, 2.0, 0.0, 4.2, 5.2),
        (1, 1000, 2.0, 0.0, 3.8, 4.6),
    )
    for at, rows, flags in (
        (day.at(100 * 60), shipped, {"profiles.latency_ms": "slow", "feed.heavy_users": "on"}),
        (day.at(170 * 60), fixed, {"profiles.latency_ms": "slow", "feed.heavy_users": "on"}),
    ):
        keep(
            state,
            Probe(
                at=at,
                url="http://127.0.0.1:8021",
                flags=flags,
                feed_started=None,
                rows=tuple(
                    ProbeRow(uid, n, 3, 0, s, c, p50, p95, 3) for uid, n, s, c, p50, p95 in rows
                ),
            ),
        )


# -- Prometheus: the day as the API answers it, and as raw series to backfill ----------------------


def _shape(day: Day, name: str, t: float) -> list[tuple[dict[str, str], float]]:
    """What each report query answers at epoch t: (labels, value) per series."""
    on, stuck, fixed = (
        day.triggers_on.timestamp(),
        day.stuck_from.timestamp(),
        day.deploy.timestamp(),
    )
    after = t >= fixed
    live = on <= t < fixed
    growth = (t - day.start.timestamp()) / day.seconds
    gap = 0.0 if after or t < on else round(3.21 * min(1.0, (t - on) / (fixed - on)), 2)
    if name == "ledger.served":
        return [({"currency": "USD"}, 50_000 * growth + gap), ({"currency": "EUR"}, 9_000 * growth)]
    if name == "ledger.recount":
        return [({"currency": "USD"}, 50_000 * growth), ({"currency": "EUR"}, 9_000 * growth)]
    if name == "ledger.gap":
        return [({}, gap)]
    if name == "ledger.accuracy":
        return [({}, 1.0 if not gap else max(0.55, 1 - gap / 6))]
    if name == "ledger.accounts":
        return [({}, float(day.accounts))]
    if name == "ledger.duplicates":
        return [({}, 0.0 if t < on else min(14.0, (t - on) / 300))]
    if name == "chain.completed":
        return [({}, 0.0 if stuck <= t < fixed else 25.0 + math.sin(t / 60))]
    if name == "chain.waiting":
        return [({}, 16.0 if stuck <= t < fixed else 2.0)]
    if name == "chain.p99":
        return [({}, math.nan if stuck <= t < fixed else (0.39 if after else 0.16))]
    if name == "feed.p95":
        return [({}, 10.0 if live else (0.17 if after else 0.1))]
    if name == "feed.statements":
        return [({}, 412.0 if live else (2.0 if after else 20.0))]
    if name == "feed.calls":
        return [({}, 10.0 if not after else 0.4)]
    if name == "restarts":
        begun = day.start.timestamp() - 3600
        return [
            (
                {"job": job, "instance": f"127.0.0.1:{port}"},
                fixed if after and job != "profiles" else begun,
            )
            for job, port in (
                ("ledger", 8001),
                ("chain-a", 8011),
                ("feed", 8021),
                ("profiles", 8022),
            )
        ]
    raise KeyError(name)


def _format(value: float) -> str:
    return "NaN" if math.isnan(value) else repr(value)


def range_answer(day: Day, name: str, start: float, end: float, step: float) -> dict[str, Any]:
    """The /api/v1/query_range body for one of the report's queries over [start, end]."""
    series: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
    first = math.ceil(max(start, day.start.timestamp()) / step) * step
    t = first
    while t <= min(end, day.end.timestamp()):
        for labels, value in _shape(day, name, t):
            series.setdefault(tuple(sorted(labels.items())), []).append([t, _format(value)])
        t += step
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": dict(labels), "values": values} for labels, values in series.items()
            ],
        },
    }


class _Stub(QuietHandler):
    day: Day
    traces: list[dict[str, Any]]

    def _send(self, status: int, body: Any) -> None:
        self.reply(status, json.dumps(body).encode())

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/-/ready":
            self._send(200, {})
        elif url.path == "/api/traces":
            query = parse_qs(url.query)
            start, end = int(query["start"][0]), int(query["end"][0])
            chosen = [t for t in self.traces if start <= t["spans"][0]["startTime"] <= end]
            self._send(200, {"data": chosen, "total": 0, "limit": 0, "offset": 0, "errors": None})
        else:
            self._send(404, {"status": "error", "error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        form = parse_qs(self.rfile.read(length).decode())
        names = {expr: name for name, expr in QUERIES.items()}
        name = names.get(form["query"][0])
        if name is None:
            self._send(400, {"status": "error", "errorType": "bad_data", "error": "unknown query"})
            return
        self._send(
            200,
            range_answer(
                self.day,
                name,
                float(form["start"][0]),
                float(form["end"][0]),
                float(form["step"][0]),
            ),
        )


@contextmanager
def stub_server(day: Day, traces: list[dict[str, Any]] | None = None) -> Iterator[str]:
    """A Prometheus (and Jaeger) HTTP API on a free port answering with the day; its URL."""
    with serving(type("Stub", (_Stub,), {"day": day, "traces": traces or []})) as url:
        yield url


def jaeger_trace(day: Day, at: datetime, statements: int, calls: int) -> dict[str, Any]:
    """A timeline trace in Jaeger's API shape: the server span, statements, then calls."""
    trace_id = uuid.uuid4().hex
    begin = int(at.timestamp() * 1e6)
    spans: list[dict[str, Any]] = []

    def span(name: str, start: int, duration: int, parent: str | None, process: str) -> None:
        span_id = uuid.uuid4().hex[:16]
        refs = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}] if parent else []
        spans.append(
            {
                "traceID": trace_id,
                "spanID": span_id,
                "operationName": name,
                "references": refs,
                "startTime": start,
                "duration": duration,
                "processID": process,
                "tags": [],
            }
        )

    span("GET /feed/{user_id}", begin, 0, None, "p1")
    root = spans[0]["spanID"]
    clock = begin + 200
    for _ in range(statements):
        span("SELECT drill", clock, 900, root, "p1")
        clock += 1000
    for _ in range(calls):
        span("GET", clock, 100_000, root, "p1")
        clock += 100_500
    spans[0]["duration"] = clock - begin + 300
    span("GET /feed/{user_id} http send", clock, 50, root, "p1")
    return {
        "traceID": trace_id,
        "spans": spans,
        "warnings": None,
        "processes": {"p1": {"serviceName": "feed", "tags": []}},
    }


# -- the raw series, for promtool's backfill ------------------------------------------------------

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


def openmetrics(day: Day, step: float = 5.0) -> Iterator[str]:
    """The day's raw series as OpenMetrics lines, one family after the other, ending # EOF."""
    times = []
    t = math.ceil(day.start.timestamp() / step) * step
    while t <= day.end.timestamp():
        times.append(t)
        t += step
    on, stuck, fixed = (
        day.triggers_on.timestamp(),
        day.stuck_from.timestamp(),
        day.deploy.timestamp(),
    )

    def le(bound: float) -> str:
        return "+Inf" if math.isinf(bound) else repr(bound)

    def family(name: str, rows: Iterator[tuple[str, float, float]]) -> Iterator[str]:
        yield f"# TYPE {name} gauge\n"
        for labels, when, value in rows:
            yield f"{name}{{{labels}}} {_format(value)} {when:.3f}\n"

    accounts = [f"acct-{n}" for n in range(day.accounts)]
    drifting = set(accounts[: day.accounts // 3])

    def ledger(kind: str) -> Iterator[tuple[str, float, float]]:
        for account in accounts:
            labels = f'job="ledger",instance="127.0.0.1:8001",account="{account}",currency="USD"'
            for when in times:
                growth = (when - day.start.timestamp()) / day.seconds
                off = 0.01 * (account in drifting) * (on <= when < fixed)
                yield labels, when, (1000 * growth + off) if kind == "balance" else off

    yield from family("ledger_balance", ledger("balance"))
    yield from family("ledger_reconciliation_difference", ledger("difference"))
    yield from family(
        "ledger_duplicate_postings",
        (
            (
                'job="ledger",instance="127.0.0.1:8001"',
                w,
                0.0 if w < on else min(14.0, (w - on) // 300),
            )
            for w in times
        ),
    )

    # Cumulative counters: orders completed (none while stuck), requests per route.
    def counter(rate: Any) -> Iterator[tuple[float, float]]:
        total = 0.0
        for when in times:
            total += rate(when) * step
            yield when, total

    orders = (
        'job="chain-a",instance="127.0.0.1:8011",service="chain-a",route="/orders",method="POST"'
    )
    yield "# TYPE http_server_requests_total gauge\n"
    for status, rate in (
        ("201", lambda w: 0.0 if stuck <= w < fixed else 25.0),
        ("503", lambda w: 1.0),
    ):
        for when, total in counter(rate):
            yield f'http_server_requests_total{{{orders},status="{status}"}} {total} {when:.3f}\n'
    feed = (
        'job="feed",instance="127.0.0.1:8021",service="feed",route="/feed/{user_id}",method="GET"'
    )
    for when, total in counter(lambda w: 2.7):
        yield f'http_server_requests_total{{{feed},status="200"}} {total} {when:.3f}\n'
    yield from family(
        "http_server_requests_in_flight",
        (
            (
                'job="chain-a",instance="127.0.0.1:8011",service="chain-a",route="/orders",method="POST"',
                w,
                16.0 if stuck <= w < fixed else 2.0,
            )
            for w in times
        ),
    )

    def latency(where: str, typical: Any) -> Iterator[str]:
        name = "http_server_request_duration_seconds_bucket"
        for bound in BUCKETS:
            total = 0.0
            for when in times:
                total += (typical(when) <= bound) * 2.7 * step
                yield f'{name}{{{where},le="{le(bound)}"}} {total} {when:.3f}\n'

    yield "# TYPE http_server_request_duration_seconds_bucket gauge\n"
    yield from latency(orders, lambda w: 0.4 if w >= fixed else 0.15)
    yield from latency(feed, lambda w: 10.0 if on <= w < fixed else (0.17 if w >= fixed else 0.09))
    for metric, before, after in (
        ("db_queries_per_request", 412.0, 2.0),
        ("http_client_calls_per_request", 10.0, 0.4),
    ):
        for part in ("sum", "count"):
            yield f"# TYPE {metric}_{part} gauge\n"
            where = 'job="feed",instance="127.0.0.1:8021",service="feed",route="/feed/{user_id}"'
            total = 0.0
            for when in times:
                per = (after if when >= fixed else before) if part == "sum" else 1.0
                total += per * 2.7 * step
                yield f"{metric}_{part}{{{where}}} {total} {when:.3f}\n"
    yield "# TYPE process_start_time_seconds gauge\n"
    for job, port in (
        ("ledger", 8001),
        ("chain-a", 8011),
        ("chain-b", 8012),
        ("chain-c", 8013),
        ("feed", 8021),
        ("profiles", 8022),
    ):
        begun = day.start.timestamp() - 3600
        for when in times:
            value = fixed if when >= fixed and job != "profiles" else begun
            labels = f'job="{job}",instance="127.0.0.1:{port}"'
            yield f"process_start_time_seconds{{{labels}}} {value} {when:.3f}\n"
    yield "# EOF\n"
