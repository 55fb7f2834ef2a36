"""The full rehearsal: the seed's program at --speed 180 on a real native lab with background
Locust, checked against `wanted` (drill/program/plan.py) through the journal, the served flags
file, the culprit service's own /metrics and the process table."""

from __future__ import annotations

import bisect
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drill import native
from drill.agenda import Break, Phase, format_clock
from drill.lab import processes
from drill.program.clock import ProgramClock
from drill.program.journal import Event, Journal
from drill.program.plan import Wanted, wanted
from drill.program.rotation import draw
from drill.program.runner import TICK_S, ProgramFiles, load
from drill.program.traffic import STOP_GRACE_S
from drill.scenarios import Program
from drill.solutions import copy_lab
from faults import (
    PROGRAM,
    Catalog,
    FlagSetting,
    describe,
    layer_flags,
    read_document,
    split_setting,
    state_path,
    targets,
)
from tests.conftest import REPO_ROOT
from tests.labs import DRILL, drop_database, fresh_database, lab_env, run_drill
from tests.polling import poll_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SPEED = 180  # the agenda's three hours in a minute
# The served file may be one tick behind the clock: the runner's wait between ticks, plus that
# tick's own work, of which stopping a Locust is the longest (up to STOP_GRACE_S).
LAG_S = TICK_S + STOP_GRACE_S
SAMPLE_S = 0.2
# A quarter of each scenario's verify users over the dark room's 15 s of wall time: the culprit
# the seed draws, fp-drift, has 5 payment clients (one payment every 0.2-0.8 s each): Locust
# counted 142 in one run. A bystander only has to show that its normal day reached it: the
# feed's 5 readers wait 5-10 s between timelines (8 in one run).
MIN_DARK_ROOM_REQUESTS = 20
MIN_BYSTANDER_REQUESTS = 3
# services/kit/metrics.py: every service counts what it served (probes and scrapes excluded).
REQUESTS_METRIC = "http_server_requests"
# What one tick writes to the journal, all stamped with the tick's own `now`.
TICK_KINDS = frozenset(
    {"phase_changed", "flag_changed", "reveal_changed", "traffic_started", "traffic_stopped",
     "hint_released", "message_shown", "program_stopped"}
)  # fmt: skip

Setting = tuple[str, float | None, dict[str, str] | None]  # variant, share, where (decoys)
Flags = dict[str, Setting]


@dataclass
class Lab:
    """A native lab under root with its own ports and database, and the program's runner."""

    root: Path
    env: dict[str, str]
    config: native.LabConfig
    runner_log: Path
    runner: subprocess.Popen[bytes] | None = None


def stop_runner(lab: Lab) -> None:
    """A runner still running (the test failed) gets SIGTERM and rolls back; `drill program
    stop` then rolls back whatever a runner left behind (flags, Locust)."""
    process = lab.runner
    if process is not None:
        processes.end(process, 10)
    run_drill(lab.root, lab.env, "program", "stop")
    # A Locust the runner lost track of (a failure this test looks for) is ended here.
    for pid in lab_locusts(lab.root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def lab(tmp_path: Path, postgres_url: str) -> Iterator[Lab]:
    """`drill up --native` on a copied tree, free ports and a fresh database; always torn down."""
    root = copy_lab(REPO_ROOT, tmp_path / "tree")
    database = f"{postgres_url.rsplit('/', 1)[1]}_rehearsal"
    with contextlib.ExitStack() as cleanup, socket.socket() as grafana:
        env = lab_env(root, database_url=fresh_database(database))
        cleanup.callback(drop_database, database)
        # Bound, never listening: the annotator's calls are refused at once, and reach no
        # Grafana another lab runs on the default port.
        grafana.bind(("127.0.0.1", 0))
        env["DRILL_GRAFANA_URL"] = f"http://127.0.0.1:{grafana.getsockname()[1]}"
        config = native.LabConfig(root, root / ".drill", int(env["DRILL_PORT_OFFSET"]))
        lab = Lab(root, env, config, tmp_path / "runner.log")
        cleanup.callback(run_drill, root, env, "down")
        up = run_drill(root, env, "up", "--native")
        assert up.returncode == 0, up.stderr + up.stdout
        cleanup.callback(stop_runner, lab)
        yield lab


class Plan:
    """`wanted` over the whole run, second by second (agenda, action and decoy times are whole
    minutes): each time the flags, traffic or entry change, and the state from then on."""

    def __init__(self, program: Program, seed: int) -> None:
        self.length = program.length
        self.times: list[int] = []
        self.states: list[Wanted] = []
        for second in range(program.length + 1):
            state = wanted(program, second, seed)
            if not self.states or _key(state) != _key(self.states[-1]):
                self.times.append(second)
                self.states.append(state)

    def between(self, low: float, high: float) -> range:
        """The states `wanted` gives at some moment from low to high (program seconds)."""
        first = max(0, bisect.bisect_right(self.times, max(0.0, low)) - 1)
        return range(first, max(bisect.bisect_right(self.times, high), first + 1))

    def lasting(self, seconds: float) -> list[int]:
        """The states (the end aside) that last longer than this many program seconds."""
        spans = zip(self.times, self.times[1:], strict=False)
        return [i for i, (start, end) in enumerate(spans) if end - start > seconds]

    def stretches(self, scenario: str) -> int:
        """How many separate stretches of background traffic the run gives this scenario."""
        runs, before = 0, False
        for state in self.states:
            now = scenario in state.traffic
            if now and not before:
                runs += 1
            before = now
        return runs


def _key(state: Wanted) -> tuple[Any, ...]:
    return state.index, sorted(settings(state.flags).items()), sorted(state.traffic)


def settings(flags: Mapping[str, FlagSetting]) -> Flags:
    return {key: split_setting(setting) for key, setting in flags.items()}


def served_flags(config: native.LabConfig, catalog: Catalog) -> Flags:
    """The flags the services read that are not at their default (the served flagd file)."""
    served: Flags = {}
    for key, definition in read_document(state_path(config.state_dir), catalog)["flags"].items():
        variant, _, percent = describe(definition)
        setting = (variant, percent, targets(definition) or None)
        if setting != (catalog[key].default_variant, None, None):
            served[key] = setting
    return served


def requests_served(url: str) -> float:
    """The service's own count of the requests it served, from its real /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5, trust_env=False).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == REQUESTS_METRIC
        for sample in family.samples
        if sample.name == f"{REQUESTS_METRIC}_total"
    )


def read_clock(files: ProgramFiles) -> ProgramClock:
    clock = files.read_clock()
    assert clock is not None, f"no {files.clock} yet"
    return clock


def this_run(events: tuple[Event, ...]) -> list[Event]:
    """The events from the last program_started on."""
    starts = [i for i, event in enumerate(events) if event.kind == "program_started"]
    assert starts, "the journal has no program_started"
    return list(events[starts[-1] :])


def lab_locusts(root: Path) -> dict[int, str]:
    """The running Locust processes on one of this lab tree's locustfiles: pid, command line."""
    found = {}
    for pid in psutil.pids():
        command = processes.cmdline(pid)
        if command and "locust" in command and str(root / "loadtests") in command:
            found[pid] = command
    return found


def flags_list_rows(lab: Lab, catalog: Catalog) -> dict[str, tuple[str, str]]:
    """`drill flags list`: each flag's (live, from) cells."""
    shown = run_drill(lab.root, {**lab.env, "COLUMNS": "400"}, "flags", "list")
    assert shown.returncode == 0, shown.stderr + shown.stdout
    rows = {}
    for line in shown.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if len(cells) >= 3 and cells[0] in catalog.flags:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def hms(text: str) -> int:
    hours, minutes, *seconds = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + sum(seconds)


@dataclass
class Watched:
    """What the test saw while the runner ran."""

    mismatches: list[str] = field(default_factory=list)
    seen_alone: set[int] = field(default_factory=set)  # plan states matched and no other
    locust_pids: set[int] = field(default_factory=set)
    before: dict[str, float] = field(default_factory=dict)  # requests served, dark room ahead
    after: dict[str, float] = field(default_factory=dict)  # the same, dark room over


def watch(lab: Lab, plan: Plan, catalog: Catalog, dark: Phase | Break, hosts: list[str]) -> Watched:
    """Sample the served flags, run.json and the hosts' request counters until the runner exits:
    each sample must match what `wanted` gives now, or gave up to a tick ago."""
    assert lab.runner is not None
    files = ProgramFiles.of(lab.config.state_dir)
    clock = poll_until(lambda: read_clock(files), "the program's clock.json", timeout=30)
    endpoints = native.endpoints(lab.config)
    seen = Watched(before={host: requests_served(endpoints[host]) for host in hosts})
    deadline = time.monotonic() + plan.length / SPEED + 30
    while lab.runner.poll() is None:
        assert time.monotonic() < deadline, f"the runner still runs; see {lab.runner_log}"
        low = clock.elapsed(datetime.now(UTC))
        served = served_flags(lab.config, catalog)
        high = clock.elapsed(datetime.now(UTC))
        states = plan.between(low - LAG_S * SPEED, high)
        allowed = [settings(plan.states[i].flags) for i in states]
        if served not in allowed:
            seen.mismatches.append(f"{format_clock(low)}: served {served}, wanted {allowed}")
        elif len(states) == 1:
            seen.seen_alone.add(states[0])
        traffic = files.read_run().get("traffic") or {}
        seen.locust_pids.update(int(record["pid"]) for record in traffic.values())
        if high < dark.start:  # no traffic yet: the last reading before the dark room
            seen.before = {host: requests_served(endpoints[host]) for host in hosts}
        elif low >= dark.end and not seen.after:
            seen.after = {host: requests_served(endpoints[host]) for host in hosts}
        time.sleep(SAMPLE_S)
    return seen


@dataclass(frozen=True)
class Tick:
    """The journal after one tick of the runner: the program flags and traffic it had journaled
    so far, and the tick's own events."""

    ts: datetime
    events: tuple[Event, ...]
    flags: Flags
    traffic: frozenset[str]

    @property
    def stopped(self) -> bool:
        return any(event.kind == "program_stopped" for event in self.events)

    def entered(self) -> list[Any]:
        return [e.fields["index"] for e in self.events if e.kind == "phase_changed"]


def replay(events: list[Event], catalog: Catalog) -> list[Tick]:
    """The run's journal tick by tick (a tick stamps its events with its own `now`)."""
    by_ts: dict[datetime, list[Event]] = {}
    for event in events[1:]:
        by_ts.setdefault(event.ts, []).append(event)
    flags: Flags = {}
    running: set[str] = set()
    ticks = []
    for ts, group in by_ts.items():
        for event in group:
            fields = event.fields
            if event.kind == "flag_changed" and fields["layer"] == PROGRAM:
                setting = (fields["variant"], fields["percent"], fields.get("where") or None)
                if setting == (catalog[fields["flag"]].default_variant, None, None):
                    flags.pop(fields["flag"], None)
                else:
                    flags[fields["flag"]] = setting
            elif event.kind == "traffic_started":
                running.add(fields["scenario"])
            elif event.kind == "traffic_stopped":
                running.discard(fields["scenario"])
        if TICK_KINDS & {event.kind for event in group}:  # not a note between ticks
            ticks.append(Tick(ts, tuple(group), dict(flags), frozenset(running)))
    return ticks


def test_the_seeds_program_runs_end_to_end_on_a_real_lab(lab: Lab) -> None:
    """`drill program start --speed 180` walks the shipped agenda once and in order: the journal
    and the served flags follow `wanted` phase by phase, background Locust loads the culprit's
    service during the dark room and rests in breaks, and at the end every flag is off, no
    Locust of the lab runs and the runner has exited."""
    program, catalog = load(lab.config)
    assert program.rotation is not None, "the seed's program rotates its culprit"
    seed = program.rotation.seed
    live = draw(program, seed).live
    plan = Plan(program, seed)
    # States that outlast two ticks of lag leave time for a sample that matches them alone;
    # every entry has one.
    distinct = plan.lasting(2 * LAG_S * SPEED)
    assert {plan.states[i].index for i in distinct} == set(range(len(program.agenda)))
    # The dark room: the first entry the plan gives background traffic; a break follows it.
    dark_index = next(state.index for state in plan.states if state.traffic)
    assert dark_index is not None and isinstance(program.agenda[dark_index + 1], Break)
    # Every scenario of a traffic phase gets its normal day, the culprit's and the bystanders'.
    busy = sorted({name for state in plan.states for name in state.traffic})
    assert set(live) <= set(busy)
    hosts = sorted({program.scenario(name).load.host for name in busy})

    command = [*DRILL, "program", "start", "--speed", str(SPEED), "--seed", str(seed),
               "--foreground", "--root", str(lab.root)]  # fmt: skip
    with open(lab.runner_log, "wb") as log:
        lab.runner = subprocess.Popen(
            command, cwd=lab.root, env=lab.env, stdout=log, stderr=subprocess.STDOUT
        )
    seen = watch(lab, plan, catalog, program.agenda[dark_index], hosts)
    output = lab.runner_log.read_text(errors="replace")
    assert lab.runner.returncode == 0, output
    assert not seen.mismatches, "\n".join(seen.mismatches)
    assert seen.seen_alone >= set(distinct), sorted(set(distinct) - seen.seen_alone)

    files = ProgramFiles.of(lab.config.state_dir)
    events = this_run(Journal(files.journal).read().events)
    assert events[0].fields["seed"] == seed
    clock = ProgramClock.model_validate(events[0].fields["clock"])
    assert clock.speed == SPEED

    # 1. Each agenda entry once, in order, then the end; the journal ends with the stop.
    changes = [e for e in events if e.kind == "phase_changed"]
    assert [(e.fields["index"], e.fields["entry"]) for e in changes] == [
        *((index, entry.name) for index, entry in enumerate(program.agenda)),
        (None, None),
    ]
    assert not [e.fields["passed"] for e in changes if "passed" in e.fields]
    for change, entry in zip(changes, program.agenda, strict=False):
        assert entry.start <= hms(change.fields["at"]) < entry.end, change
    assert (events[-1].kind, events[-1].fields["reason"]) == ("program_stopped", "finished")
    notes = [str(e.fields["text"]) for e in events if e.kind == "note"]
    assert not [text for text in notes if "tick failed" in text], notes

    # 2. After each tick the journal's program flags and traffic are `wanted`'s at the tick's
    # program time; after the rollback, nothing.
    ticks = replay(events, catalog)
    problems = []
    for tick in ticks:
        state = wanted(program, clock.elapsed(tick.ts), seed)
        expected = ({}, frozenset()) if tick.stopped else (settings(state.flags), state.traffic)
        if (tick.flags, tick.traffic) != expected:
            at = format_clock(clock.elapsed(tick.ts))
            problems.append(f"{at}: journal {tick.flags, tick.traffic} != wanted {expected}")
    assert not problems, "\n".join(problems)
    # The drawn culprit's triggers are on where the plan wants them, off in the breaks, and
    # so is traffic.
    entering = {index: tick for tick in ticks for index in tick.entered()}
    triggers = {t.flag for name in live for t in program.scenario(name).triggers}
    assert any(triggers <= entering[i].flags.keys() for i in range(len(program.agenda)))
    for index, entry in enumerate(program.agenda):
        if isinstance(entry, Break):
            tick = entering[index]
            assert not triggers & tick.flags.keys() and not tick.traffic, entry.name

    # 3. A Locust per stretch of traffic the plan wants, none crashed, and the request counter
    # of every service with traffic, the culprit's above all, grew during the dark room.
    traffic_events = [e for e in events if e.kind in ("traffic_started", "traffic_stopped")]
    assert not [e.fields for e in traffic_events if "reason" in e.fields], "a Locust exited"
    assert {e.fields["scenario"] for e in traffic_events} == set(busy)
    for name in busy:
        kinds = [e.kind for e in traffic_events if e.fields["scenario"] == name]
        assert kinds == ["traffic_started", "traffic_stopped"] * plan.stretches(name), kinds
    assert seen.after, "no reading of the services after the dark room"
    culprits = {program.scenario(name).load.host for name in live}
    for host in hosts:
        grew = seen.after[host] - seen.before[host]
        floor = MIN_DARK_ROOM_REQUESTS if host in culprits else MIN_BYSTANDER_REQUESTS
        assert grew >= floor, f"{host} served {grew:g} requests in the dark room"

    # 4. Everything off, nothing left running.
    assert layer_flags(lab.config.state_dir, catalog, PROGRAM) == {}
    assert served_flags(lab.config, catalog) == {}
    rows = flags_list_rows(lab, catalog)
    assert rows.keys() == catalog.flags.keys()
    for key, (shown, source) in rows.items():
        assert shown.startswith(f"{catalog[key].default_variant} (") and source == "default", key
    pids = seen.locust_pids | {e.fields["pid"] for e in traffic_events if "pid" in e.fields}
    for pid in pids:
        assert "locust" not in (processes.cmdline(pid) or ""), f"Locust {pid} still runs"
    assert lab_locusts(lab.root) == {}
    assert not files.run.exists() and not files.clock.exists()
    assert "runner stopped: finished" in output
