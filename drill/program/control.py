"""What `drill program` commands do: start or resume a run, stop it, move its clock, read it.

The runner only reads clock.json; these commands change it under the program lock and journal
who did it. A runner that died without its rollback (kill -9, a crash) leaves clock.json
behind: `start` resumes that run (a `note`, never a second `program_started`, so nothing is
journaled twice), and `stop` performs the rollback itself.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drill import native
from drill.agenda import format_clock, parse_clock
from drill.lab import processes
from drill.program.api import listen_address
from drill.program.clock import ProgramClock
from drill.program.journal import Journal
from drill.program.plan import boundaries, find_entry, wanted
from drill.program.runner import (
    ProgramError,
    ProgramFiles,
    Runner,
    load,
    runner_alive,
    snapshot_of,
)
from drill.program.teams import Workshop
from drill.program.traffic import Traffic, owned
from faults import PROGRAM, layer_flags

INSTRUCTOR = "instructor"
# The runner's rollback takes at most 2 s; past this, stop kills it and rolls back itself.
STOP_WAIT_S = 5.0
READY_WAIT_S = 20.0
_LAUNCHED: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Started:
    """What start did: a fresh run or a resumed one, at which program time, in which process."""

    resumed: bool
    at: float
    seed: int
    pid: int | None


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def prepare(
    config: native.LabConfig,
    *,
    at: str | None = None,
    speed: float | None = None,
    seed: int | None = None,
    fresh: bool = False,
    traffic: bool = True,
    annotations: bool = True,
    listen: str | None = None,
    started_at: datetime | None = None,
    now: datetime | None = None,
) -> Started:
    """Write the run's clock.json and run.json (or take up a crashed run's) and journal it.

    Call under `files.locked()` with no live runner; the caller then runs or launches it.
    """
    now = _now(now)
    files = ProgramFiles.of(config.state_dir)
    program, catalog = load(config)
    journal = Journal(files.journal)
    if listen is not None:
        try:
            listen = listen_address(listen)
        except ValueError as exc:
            raise ProgramError(str(exc)) from None
        beyond = not ipaddress.ip_address(listen).is_loopback
        if beyond and not Workshop(files.directory, program, journal).has_tokens():
            raise ProgramError(
                f"--listen {listen} serves the API beyond this machine, and its writes need "
                "tokens: make them first with `drill program teams add NAME...` (or `drill "
                "program token` for the instructor's alone)"
            )
    try:
        clock = files.read_clock()
    except ValueError as exc:
        if not fresh:
            message = f"{files.clock} is damaged ({exc}); start over with --fresh"
            raise ProgramError(message) from None
        clock = None
    if clock is not None and not fresh:
        if at is not None or started_at is not None:
            here = format_clock(clock.elapsed(now))
            raise ProgramError(
                f"a program stopped without its rollback is waiting at {here}: plain `drill "
                "program start` resumes it, then `drill program goto` moves it; or --fresh "
                "starts over"
            )
        if speed is not None:
            clock = clock.with_speed(now, speed)
            files.write_clock(clock)
        run = files.read_run()
        run_seed = int(run.get("seed", 0))
        files.update_run(pid=None, ready=False, **({"listen": listen} if listen else {}))
        here = format_clock(clock.elapsed(now))
        journal.append(
            "note", INSTRUCTOR, now,
            text=f"resuming the program at {here}: its runner stopped without a rollback",
            action="resume_run",
        )  # fmt: skip
        return Started(True, clock.elapsed(now), run_seed, None)
    if fresh:
        rollback_without_runner(config, "stopped (replaced by start --fresh)")
    if at is not None and started_at is not None:
        raise ProgramError(
            "give --at (a program time) or --started-at (a wall-clock time), not both"
        )
    if started_at is not None:
        ran = (now - started_at).total_seconds()
        if ran < 0:
            raise ProgramError(f"--started-at {started_at:%H:%M:%S} is in the future")
        start_at: float = ran * (speed or 1.0)
        shown = f"--started-at {started_at:%H:%M:%S}"
    else:
        start_at = 0 if at is None else parse_clock(at)
        shown = f"--at {at}"
    if start_at >= program.length:
        raise ProgramError(f"{shown} is past the program's end ({format_clock(program.length)})")
    run_seed = seed if seed is not None else program.rotation.seed if program.rotation else 0
    clock = ProgramClock.start(now, start_at, speed or 1.0)
    files.write_clock(clock)
    files.write_run(
        {
            "seed": run_seed,
            "started": now.isoformat(timespec="seconds"),
            "root": str(config.root),
            "traffic_enabled": traffic,
            "annotations": annotations,
            "listen": listen,
            "pid": None,
            "traffic": {},
        }
    )
    journal.append(
        "program_started", INSTRUCTOR, now,
        clock=clock.model_dump(mode="json"), seed=run_seed,
    )  # fmt: skip
    return Started(False, float(start_at), run_seed, None)


def start(config: native.LabConfig, *, foreground: bool = False, **options: Any) -> Started:
    """Refuse when a runner lives; prepare the run; launch the runner unless `foreground` (the
    caller then runs `runner.serve` in this process)."""
    files = ProgramFiles.of(config.state_dir)
    with files.locked():
        pid = runner_alive(files)
        if pid is not None:
            raise ProgramError(
                f"a runner is already running (pid {pid}); see `drill program status`, or "
                "`drill program stop` first"
            )
        started = prepare(config, **options)
        if foreground:
            pid = os.getpid()
            files.update_run(pid=pid)
        else:
            pid = launch(config)
    if not foreground:
        wait_ready(config, pid)
    return Started(started.resumed, started.at, started.seed, pid)


def launch(config: native.LabConfig) -> int:
    """Start the runner as a detached process (its own session, output to runner.log)."""
    files = ProgramFiles.of(config.state_dir)
    env = dict(os.environ)
    env.update(
        DRILL_ROOT=str(config.root),
        DRILL_STATE_DIR=str(config.state_dir),
        DRILL_PORT_OFFSET=str(config.port_offset),
        PYTHONUNBUFFERED="1",
    )
    files.directory.mkdir(parents=True, exist_ok=True)
    with open(files.log, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "drill.program.runner"],
            cwd=config.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # It outlives this process on purpose; held here, it is not reported as left running.
    _LAUNCHED.append(child)
    # Recorded before the lock is let go: a second start now sees a live runner.
    files.update_run(pid=child.pid)
    return child.pid


def wait_ready(config: native.LabConfig, pid: int, timeout: float = READY_WAIT_S) -> None:
    """Wait for the launched runner's first tick; a runner that died says why."""
    files = ProgramFiles.of(config.state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = files.read_run()
        if run.get("ready") and run.get("pid") == pid:
            if run.get("first_tick") == "failed":
                raise ProgramError(
                    f"the runner (pid {pid}) runs, but its first tick failed; it keeps trying. "
                    f"{_tail(files)}\n`drill program stop` ends it"
                )
            return
        if not processes.alive(pid):
            raise ProgramError(f"the runner exited before its first tick. {_tail(files)}")
        time.sleep(0.1)
    message = f"the runner (pid {pid}) has not ticked within {timeout:g} s; see {files.log}"
    raise ProgramError(message)


def _tail(files: ProgramFiles, lines: int = 15) -> str:
    try:
        tail = files.log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"{files.log} is empty."
    return f"Last lines of {files.log}:\n" + "\n".join(f"  {line}" for line in tail)


def stop(config: native.LabConfig, by: str = INSTRUCTOR, timeout: float = STOP_WAIT_S) -> str:
    """SIGTERM the runner and wait for its rollback; with no runner, roll back here."""
    files = ProgramFiles.of(config.state_dir)
    pid = runner_alive(files)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while processes.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not processes.alive(pid):
            return f"the runner (pid {pid}) stopped and rolled back"
        os.kill(pid, signal.SIGKILL)
    with files.locked():
        left = files.clock.exists() or files.run.exists()
        left = left or bool(layer_flags(config.state_dir, load(config)[1], PROGRAM))
        if not left:
            return "no program was running; nothing to roll back"
        how = "killed after it ignored SIGTERM" if pid is not None else "no runner was running"
        rollback_without_runner(config, f"stopped ({how})", by)
        return f"rolled back ({how})"


def rollback_without_runner(config: native.LabConfig, reason: str, by: str = INSTRUCTOR) -> None:
    """The runner's rollback, for a run whose runner is gone: flags, traffic, journal, files."""
    files = ProgramFiles.of(config.state_dir)
    program, catalog = load(config)
    traffic = Traffic(config, program, files.directory, files.traffic_records())
    seed = int(files.read_run().get("seed", 0))
    Runner(config, program, catalog, seed, traffic=traffic).rollback(reason, by)
    files.clock.unlink(missing_ok=True)
    files.run.unlink(missing_ok=True)


def change_clock(
    config: native.LabConfig,
    action: str,
    target: str | None = None,
    by: str = INSTRUCTOR,
    now: datetime | None = None,
) -> ProgramClock:
    """pause, resume, next or goto TARGET (an entry's name or an H:MM time); journaled."""
    now = _now(now)
    files = ProgramFiles.of(config.state_dir)
    program, _ = load(config)
    with files.locked():
        try:
            clock = files.read_clock()
        except ValueError as exc:
            raise ProgramError(f"{files.clock} is damaged ({exc})") from None
        if clock is None:
            raise ProgramError("no program is running; start one with `drill program start`")
        before = clock.elapsed(now)
        try:
            if action == "pause":
                changed = clock.pause(now)
            elif action == "resume":
                changed = clock.resume(now)
            elif action == "next":
                changed = clock.next(now, boundaries(program))
            elif action == "goto" and target is not None:
                changed = clock.goto(now, _target_time(program, target))
            else:
                raise ProgramError(f"unknown clock action {action!r}")
        except ValueError as exc:
            raise ProgramError(str(exc)) from None
        files.write_clock(changed)
        after = changed.elapsed(now)
        Journal(files.journal).append(
            "note", by, now,
            text=f"{action}: program clock {format_clock(before)} -> {format_clock(after)}"
            + (" (paused)" if changed.paused else ""),
            action=action, before=format_clock(before), after=format_clock(after),
        )  # fmt: skip
    return changed


def _target_time(program: Any, target: str) -> float:
    try:
        return float(parse_clock(target))
    except ValueError:
        return float(find_entry(program, target).start)


@dataclass(frozen=True)
class Status:
    """What `drill program status` shows: the run's state from its files, and the runner."""

    snapshot: dict[str, Any] | None
    pid: int | None
    program_flags: dict[str, tuple[str, float | None]]
    traffic: dict[str, bool]
    last_stop: str | None
    traffic_enabled: bool = True


def read_status(config: native.LabConfig, now: datetime | None = None) -> Status:
    """The program's state computed from clock.json and run.json (a runner need not be alive)."""
    now = _now(now)
    files = ProgramFiles.of(config.state_dir)
    program, catalog = load(config)
    flags = {
        key: (entry.variant, entry.percent)
        for key, entry in layer_flags(config.state_dir, catalog, PROGRAM).items()
    }
    traffic = {name: owned(process) for name, process in files.traffic_records().items()}
    try:
        clock = files.read_clock()
    except ValueError:
        clock = None
    last_stop = None
    for event in Journal(files.journal).read().events:
        if event.kind == "program_stopped":
            last_stop = f"{event.ts:%Y-%m-%d %H:%M:%S} UTC: {event.fields.get('reason')}"
        elif event.kind == "program_started":
            last_stop = None
    if clock is None:
        return Status(None, runner_alive(files), flags, traffic, last_stop)
    run = files.read_run()
    seed = int(run.get("seed", 0))
    snapshot = snapshot_of(program, clock, wanted(program, clock.elapsed(now), seed), seed)
    enabled = bool(run.get("traffic_enabled", True))
    return Status(snapshot, runner_alive(files), flags, traffic, last_stop, enabled)
