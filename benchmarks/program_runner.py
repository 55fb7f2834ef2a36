"""The workshop runner against a real native lab: phase boundary to effect, and what it costs.

1. Boundary to effect. A copy of the lab gets a benchmark-only program (validated like any
   other): a settling break, then one-minute entries that alternate a phase whose flag action
   turns the fp-drift trigger `ledger.fx_conversion` on and a break that turns it off. The real
   runner plays it (`python -m drill.cli program start`, detached, as an instructor starts it)
   at a speed that makes an entry a few seconds of wall time (default x18.13: 3.3 s, 6.618
   ticks, so the boundaries do not lock onto the tick cycle). The clock starts at the wall
   instant the program clock crosses a boundary (clock.json: anchor + (boundary - at) / speed)
   and stops when a response from the ledger shows the new state: from that instant a EUR
   payment is posted every 10 ms, and its booked currency is USD while conversion is on, EUR
   while off. The split comes from the run's own records: the runner's journal (a flag_changed
   line carries the time its tick began) and flags.json's ctime (set when the new file is
   renamed into place).
2. Runner cost. The seed's program as shipped (scenarios.yaml, 3:00) runs against the full
   native lab with background traffic on, by default at x18 (10 wall minutes). Once a second
   the benchmark reads (psutil) the CPU time and RSS of the runner and of every process
   below it (its headless Locust children), and asks the runner's API for its last
   tick.

Run: PYTHONPATH=. .venv/bin/python benchmarks/program_runner.py [--boundaries 50]
     [--cpu-run-seconds 600] (0 skips a part)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import yaml
from _lab import (
    Lab,
    backend_note,
    header,
    http_client,
    median,
    percentile,
    print_table,
    running_lab,
)

from drill.agenda import format_clock
from drill.lab import processes
from drill.program.api import RUNNER_PORT
from drill.program.clock import ProgramClock
from drill.program.journal import Event, Journal
from drill.program.runner import TICK_S, ProgramFiles
from drill.scenarios import load_program
from faults import load_catalog
from faults._client import DEFAULT_POLL_MS

FLAG = "ledger.fx_conversion"
SCENARIO = "fp-drift"
EXPECTED_CURRENCY = {"on": "USD", "off": "EUR"}
PROBE_S = 0.010
# The first measured boundary comes this many program minutes in: `drill program start` has
# returned (after the runner's first tick) and the lab has settled well before it.
SETTLE_MINUTES = 2
# An entry lasts 6.618 ticks of wall time by default, so each boundary lands 0.618 of a tick
# (the golden ratio) later in the runner's tick cycle than the one before: the boundaries sample
# the tick phase evenly. A whole number of ticks locks every boundary onto one phase.
ENTRY_TICKS = 6.618
SAMPLE_S = 1.0
CLI_TIMEOUT_S = 60
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def interrupt(_signum: int, _frame: FrameType | None) -> None:
    # The first Ctrl-C or SIGTERM ends the run; later ones are ignored, so the cleanup (runner
    # stopped, lab down, database dropped) is not cut short in its turn.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def closed_url() -> str:
    """A loopback URL nothing listens on: the runner's Grafana annotations fail fast there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def drill_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """`drill ARGS --root COPY` as a subprocess against the lab (its own session: Ctrl-C at
    the terminal reaches the benchmark, which then stops the runner itself)."""
    env = lab.env()
    env["DRILL_GRAFANA_URL"] = closed_url()
    command = [sys.executable, "-m", "drill.cli", *args, "--root", str(lab.copy)]
    return subprocess.run(
        command,
        cwd=lab.copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        start_new_session=True,
    )


@contextlib.contextmanager
def program_running(lab: Lab, *start_args: str) -> Iterator[tuple[int, ProgramClock]]:
    """`drill program start ARGS` (the detached runner); yields its pid and clock; always
    ends with `drill program stop`, then kills by pid whatever of it is still alive."""
    files = ProgramFiles.of(lab.state_dir)
    seen: set[int] = set()
    try:
        done = drill_cli(lab, "program", "start", *start_args)
        runner_pid = files.read_run().get("pid")
        if isinstance(runner_pid, int) and runner_pid > 1:
            seen.add(runner_pid)
        if done.returncode != 0:
            raise RuntimeError(f"drill program start exited {done.returncode}:\n{done.stderr}")
        clock = files.read_clock()
        if not isinstance(runner_pid, int) or clock is None:
            raise RuntimeError(f"no runner pid or clock in {files.directory}")
        yield runner_pid, clock
    finally:
        seen.update(descendants(next(iter(seen))) if seen else ())
        try:
            stopped = drill_cli(lab, "program", "stop")
            if stopped.returncode != 0:
                print(f"drill program stop exited {stopped.returncode}: {stopped.stderr.strip()}")
        finally:
            for pid in sorted(seen):
                command = processes.cmdline(pid) or ""
                # Still ours (a reused pid runs something else): the runner or a Locust.
                if processes.alive(pid) and ("drill.program" in command or "locust" in command):
                    print(f"pid {pid} survived `drill program stop`; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def wall(clock: ProgramClock, program_seconds: float) -> float:
    """The Unix time at which the running clock reads `program_seconds`."""
    return clock.anchor.timestamp() + (program_seconds - clock.at) / clock.speed


def run_events(state_dir: Path) -> list[Event]:
    """The journal's events since the last program_started."""
    events: list[Event] = []
    for event in Journal(ProgramFiles.of(state_dir).journal).read().events:
        events = [] if event.kind == "program_started" else events
        events.append(event)
    return events


# -- part 1: phase boundary to effect ----------------------------------------------------------


def boundary_program(shipped: dict[str, Any], boundaries: int) -> dict[str, Any]:
    """The shipped file's scenarios with an agenda that turns FLAG on and off each minute."""

    def hm(minutes: int) -> str:
        return format_clock(minutes * 60)

    agenda: list[dict[str, Any]] = [{"break": "settle", "start": hm(0), "end": hm(SETTLE_MINUTES)}]
    for i in range(boundaries):
        start, end = hm(SETTLE_MINUTES + i), hm(SETTLE_MINUTES + i + 1)
        if i % 2 == 0:
            # A flag action, not `triggers: "on"`: fp-drift's other trigger (3% of commits
            # 1.5 s slow) would sit in the probe's own path.
            action = {"at": "0:00", "flag": FLAG, "variant": "on"}
            agenda.append(
                {"phase": f"on {i // 2 + 1}", "start": start, "end": end,
                 "scenarios": [SCENARIO], "actions": [action]}
            )  # fmt: skip
        else:
            agenda.append({"break": f"off {i // 2 + 1}", "start": start, "end": end})
    return {
        "version": shipped["version"],
        "scenarios": shipped["scenarios"],
        "length": hm(SETTLE_MINUTES + boundaries),
        "agenda": agenda,
    }


@dataclass
class Boundary:
    number: int
    variant: str
    at: float  # Unix time the program clock crossed it
    seen: float | None = None  # first response showing the new state
    written: float | None = None  # flags.json's ctime after it was seen
    tick: float | None = None  # the journal's flag_changed time
    polls: int = 0
    skipped: bool = False


def probe_boundary(client: httpx.Client, boundary: Boundary, give_up: float) -> None:
    """From the boundary on, post a EUR payment every PROBE_S until it is booked as wanted."""
    want = EXPECTED_CURRENCY[boundary.variant]
    payment = {
        "account_id": f"boundary-{boundary.number}",
        "direction": "credit",
        "currency": "EUR",
        "amount": "10.00",
    }
    delay = boundary.at - time.time()
    if delay < 0:
        boundary.skipped = True  # the previous boundary's probe ran past this one
        return
    time.sleep(delay)
    while time.time() < give_up:
        boundary.polls += 1
        response = client.post("/transactions", json=payment)
        response.raise_for_status()
        if response.json()["currency"] == want:
            boundary.seen = time.time()
            return
        time.sleep(max(0.0, boundary.at + boundary.polls * PROBE_S - time.time()))


def measure_boundaries(args: argparse.Namespace, backend: str) -> None:
    speed = args.speed or 60 / (ENTRY_TICKS * TICK_S)
    entry_s = 60 / speed
    header(
        "Phase boundary to flags live in a service (the program runner)",
        [
            f"path: native lab, {backend}, shipped ledger only, tracing off; loopback; the real "
            "runner, detached by `python -m drill.cli program start --no-traffic "
            f"--no-annotations --speed {speed:g}`",
            f"program: a copy of scenarios.yaml whose agenda is a {SETTLE_MINUTES}-minute break, "
            f"then {args.boundaries} one-minute entries alternating a phase (flag action "
            f"{FLAG} = on, scenario {SCENARIO}) and a break (the program layer empty: off)",
            f"speed x{speed:g}: an entry lasts {entry_s:.3f} s of wall time, "
            f"{entry_s / TICK_S:.3f} runner ticks of {TICK_S:g} s (plus each tick's own time), "
            "so the boundaries fall at every phase of the tick cycle; services poll flags.json "
            f"every {DEFAULT_POLL_MS} ms",
            "clock starts: the wall instant the program clock crosses the boundary "
            "(clock.json's anchor + (boundary - at) / speed)",
            f"clock stops: the first response to a EUR payment posted every {PROBE_S * 1000:.0f}"
            " ms from that instant whose booked currency shows the new state (USD on, EUR off);"
            " give-up: the next boundary",
        ],
    )
    catalog = load_catalog()
    with running_lab(backend=backend, only=["ledger"]) as lab:
        path = lab.copy / "scenarios.yaml"
        program = boundary_program(yaml.safe_load(path.read_text()), args.boundaries)
        path.write_text(yaml.safe_dump(program, sort_keys=False, allow_unicode=True))
        load_program(path, catalog)  # the runner refuses a bad program; say so here first
        start = ("--speed", f"{speed:g}", "--no-traffic", "--no-annotations")
        with (
            program_running(lab, *start) as (_pid, clock),
            http_client(lab.ledger_url, timeout=5) as client,
        ):
            measured = []
            for k in range(1, args.boundaries + 1):
                at = wall(clock, (SETTLE_MINUTES + k - 1) * 60)
                boundary = Boundary(k, "on" if k % 2 else "off", at)
                give_up = wall(clock, (SETTLE_MINUTES + k) * 60)  # the next boundary
                probe_boundary(client, boundary, give_up)
                if boundary.seen is not None:
                    # Nothing rewrites flags.json between boundaries (a tick that changes no
                    # flag writes nothing): its ctime is this boundary's write.
                    boundary.written = (lab.state_dir / "flags.json").stat().st_ctime_ns / 1e9
                measured.append(boundary)
        changes = [
            e
            for e in run_events(lab.state_dir)
            if e.kind == "flag_changed" and e.fields.get("flag") == FLAG and e.by == "runner"
        ]
    for boundary in measured:
        tick = next(
            (
                e.ts.timestamp()
                for e in changes
                if e.fields.get("variant") == boundary.variant
                and e.ts.timestamp() >= boundary.at - 0.001
            ),
            None,
        )
        boundary.tick = tick
    report_boundaries(measured)


def _ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else (later - earlier) * 1000


def report_boundaries(measured: Sequence[Boundary]) -> None:
    seen = [b for b in measured if b.seen is not None]
    total = [(b.seen - b.at) * 1000 for b in seen if b.seen is not None]
    timeouts = sum(1 for b in measured if not b.skipped and b.seen is None)
    skipped = sum(1 for b in measured if b.skipped)
    print()
    print_table(
        ["boundaries", "median ms", "p90 ms", "p99 ms", "max ms", "min ms", "polls/boundary",
         "timeouts", "skipped"],
        [[len(total), median(total), percentile(total, 0.90), percentile(total, 0.99),
          max(total, default=float("nan")), min(total, default=float("nan")),
          median([float(b.polls) for b in seen]), timeouts, skipped]],
    )  # fmt: skip
    parts = {
        "boundary -> runner tick (journal ts)": [_ms(b.tick, b.at) for b in seen],
        "tick -> flags.json in place (ctime)": [_ms(b.written, b.tick) for b in seen],
        "flags.json -> ledger books it": [_ms(b.seen, b.written) for b in seen],
        "boundary -> runner wrote it (ctime)": [_ms(b.written, b.at) for b in seen],
        "total: boundary -> ledger books it": [_ms(b.seen, b.at) for b in seen],
    }
    rows: list[list[object]] = []
    for name, raw in parts.items():
        values = [v for v in raw if v is not None]
        rows.append(
            [name, len(values), median(values), percentile(values, 0.90),
             percentile(values, 0.99), max(values, default=float("nan"))]
        )  # fmt: skip
    print()
    print_table(["split", "n", "median ms", "p90 ms", "p99 ms", "max ms"], rows)
    print()
    print(
        "(p99 over fewer than 100 boundaries is the slowest of them. The journal's time is when"
        " the tick began, before it journaled the phase change and wrote the layers; ctime has"
        " the kernel's coarse clock, a few ms.)"
    )


# -- part 2: the runner's CPU and memory -------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    own_s: float  # user + system CPU seconds (every thread)
    reaped_s: float  # children's user + system: the children it has waited for
    rss_kib: int


def proc_stat(process: psutil.Process) -> ProcStat | None:
    try:
        with process.oneshot():
            cpu = process.cpu_times()
            rss = process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    return ProcStat(cpu.user + cpu.system, cpu.children_user + cpu.children_system, rss // 1024)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Sample:
    t: float
    runner_cpu_s: float
    runner_rss: int
    children_cpu_s: float  # live descendants' own + reaped, plus what the runner reaped
    children_rss: int
    children: int


@dataclass
class CostRun:
    samples: list[Sample] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)  # seconds since the runner's last tick
    ticks_seen: set[float] = field(default_factory=set)
    startup_cpu_s: float = 0.0
    ended: str = "time up"


def sample(runner_pid: int) -> Sample | None:
    try:
        process = psutil.Process(runner_pid)
        children = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    runner = proc_stat(process)
    if runner is None:
        return None
    below = [s for s in map(proc_stat, children) if s is not None]
    return Sample(
        t=time.monotonic(),
        runner_cpu_s=runner.own_s,
        runner_rss=runner.rss_kib,
        children_cpu_s=runner.reaped_s + sum(s.own_s + s.reaped_s for s in below),
        children_rss=sum(s.rss_kib for s in below),
        children=len(below),
    )


def last_tick_age(client: httpx.Client, clock: ProgramClock, run: CostRun) -> None:
    """How long ago the runner's last tick was, from the snapshot it publishes after each."""
    try:
        snapshot = client.get("/program").json()
    except (httpx.HTTPError, ValueError):
        return
    answered = time.time()
    if snapshot.get("running") and isinstance(snapshot.get("elapsed"), int | float):
        tick = wall(clock, float(snapshot["elapsed"]))
        run.ticks_seen.add(round(tick, 6))
        run.ages.append(answered - tick)


def measure_cost(args: argparse.Namespace, backend: str) -> None:
    shipped = load_program(Path(__file__).resolve().parent.parent / "scenarios.yaml")
    speed = args.cpu_speed or shipped.length / args.cpu_run_seconds
    program_wall = shipped.length / speed
    seconds = min(args.cpu_run_seconds, program_wall)
    header(
        "The program runner's CPU and memory over an accelerated workshop",
        [
            f"path: native lab, {backend}, every service plus Prometheus (scrapes the runner's "
            "/metrics every 5 s), shipped code, tracing off; the real runner, detached by "
            f"`python -m drill.cli program start --speed {speed:g}`, background traffic on",
            f"program: scenarios.yaml as shipped ({format_clock(shipped.length)}, seed "
            f"{shipped.rotation.seed if shipped.rotation else 0}) at x{speed:g}: "
            f"{program_wall:.0f} s of wall time; measured for {seconds:.0f} s; tick {TICK_S:g} s",
            "Grafana annotations on, at a closed port (no Grafana in the native lab: one "
            "journal note, then skipped)",
            f"every {SAMPLE_S:g} s, through psutil: CPU time (user+system) and RSS of the runner, "
            "and of every process below it (headless Locust), plus what the runner reaped "
            "(its children's user+system); CPU % is of one CPU, in steps of "
            f"{100 / CLOCK_TICKS:g}% per 1 s interval (the kernel counts {CLOCK_TICKS} ticks a s)",
            "the runner's own figures include its threads (API, annotations); the Locust "
            "children are counted separately, never in the runner's row",
            "the benchmark also GETs the runner's /program once a second (its own CPU counts "
            "in the runner's row) to see when the last tick ran",
        ],
    )
    run = CostRun()
    with running_lab(backend=backend) as lab:
        start = ("--speed", f"{speed:g}")
        with (
            program_running(lab, *start) as (runner_pid, clock),
            http_client(f"http://127.0.0.1:{RUNNER_PORT + lab.config.port_offset}", 2) as api,
        ):
            began = time.monotonic()
            first = sample(runner_pid)
            if first is None:
                raise RuntimeError(f"the runner (pid {runner_pid}) is gone already")
            run.samples.append(first)
            run.startup_cpu_s = first.runner_cpu_s
            step = 1
            while time.monotonic() - began < seconds:
                time.sleep(max(0.0, began + step * SAMPLE_S - time.monotonic()))
                step += 1
                current = sample(runner_pid)
                if current is None:
                    run.ended = "the runner exited (program finished)"
                    break
                run.samples.append(current)
                last_tick_age(api, clock, run)
        events = run_events(lab.state_dir)
        log = ProgramFiles.of(lab.state_dir).log
        failed_ticks = log.read_text(errors="replace").count("tick failed") if log.exists() else 0
    report_cost(run, events, failed_ticks)


def _percent(samples: Sequence[Sample], cpu: str) -> tuple[list[float], float]:
    """Per-interval CPU % of one CPU, and the mean over the whole run."""
    values = []
    for a, b in itertools.pairwise(samples):
        values.append((getattr(b, cpu) - getattr(a, cpu)) / (b.t - a.t) * 100)
    span = samples[-1].t - samples[0].t
    used = getattr(samples[-1], cpu) - getattr(samples[0], cpu)
    return values, (used / span * 100 if span > 0 else float("nan"))


def report_cost(run: CostRun, events: Sequence[Event], failed_ticks: int) -> None:
    samples = run.samples
    rows: list[list[object]] = []
    for name, cpu, rss in (
        ("runner (own process)", "runner_cpu_s", "runner_rss"),
        ("its Locust children", "children_cpu_s", "children_rss"),
    ):
        values, mean = _percent(samples, cpu)
        used = getattr(samples[-1], cpu) - getattr(samples[0], cpu)
        # Locust's memory while one runs (none does in the welcome phase or a break).
        alive = samples if cpu == "runner_cpu_s" else [s for s in samples if s.children]
        rss_mib = [getattr(s, rss) / 1024 for s in alive] or [float("nan")]
        rows.append(
            [name, len(values), median(values), percentile(values, 0.99), mean, used,
             rss_mib[0], median(rss_mib), max(rss_mib)]
        )  # fmt: skip
    print()
    print(f"ran {samples[-1].t - samples[0].t:.0f} s ({run.ended}); {len(samples)} samples")
    print_table(
        ["process", "intervals", "CPU % median", "CPU % p99", "CPU % mean", "CPU s",
         "RSS MiB start", "RSS MiB median", "RSS MiB max"],
        rows,
    )  # fmt: skip
    print()
    print(
        f"runner startup before the first sample (imports, first tick): "
        f"{run.startup_cpu_s:.2f} CPU s; Locust processes alive at once: "
        f"max {max(s.children for s in samples)}"
    )
    span = samples[-1].t - samples[0].t
    ages_ms = [a * 1000 for a in run.ages]
    print(
        f"ticks: the runner journals no plain tick. At ~{span / TICK_S:.0f} expected (one per "
        f"{TICK_S:g} s plus the tick's time), 1 Hz polling saw {len(run.ticks_seen)} distinct; "
        f"last tick's age at each poll: median {median(ages_ms):.0f} ms, p99 "
        f"{percentile(ages_ms, 0.99):.0f} ms, max {max(ages_ms, default=float('nan')):.0f} ms "
        f"(over {TICK_S * 1000:.0f} ms plus a tick's time means a late tick)"
    )
    kinds = Counter(e.kind for e in events)
    evidence = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    print(f"journal of the run: {evidence or 'empty'}")
    notes = [str(e.fields.get("text", "")) for e in events if e.kind == "note"]
    print(f"failed ticks: {failed_ticks} in runner.log, "
          f"{sum('tick failed' in n for n in notes)} journal notes")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boundaries", type=int, default=50, help="phase boundaries (0: skip)")
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help=f"program speed for the boundaries (default: an entry lasts {ENTRY_TICKS} ticks)",
    )
    parser.add_argument(
        "--cpu-run-seconds",
        type=float,
        default=600,
        help="wall seconds of the cost run (0: skip); the speed fits the program into them",
    )
    parser.add_argument("--cpu-speed", type=float, default=None, help="override that speed")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    started = datetime.now().astimezone()
    try:
        backend = backend_note()
        print(f"started {started:%Y-%m-%d %H:%M:%S %z}; load average {os.getloadavg()[0]:.2f}")
        print()
        if args.boundaries > 0:
            measure_boundaries(args, backend)
            print()
        if args.cpu_run_seconds > 0:
            measure_cost(args, backend)
    except KeyboardInterrupt:
        print("interrupted; runner stopped, lab down, database dropped")
        return 130
    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
