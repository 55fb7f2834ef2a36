"""Background traffic: headless Locust per scenario of the phase, a steady "normal day" while a
phase needs it, so every dashboard shows the live scenario's symptom during the dark room, and
the services that are not the culprit (the decoys' targets among them) show a normal day.

It is not verify's load. Each scenario's locustfile, user class and host are reused, at a
quarter of verify's users (at least one), spawned at once, with no end time: the runner stops
it with SIGTERM (then SIGKILL) when the phase no longer wants it. Verify's recorder variables
are taken out of its environment, so it writes no samples, truth or acted counts anywhere,
least of all into a verify run's directory. Each process runs in its own session (Ctrl-C at
the runner's terminal does not reach it) and is recorded in run.json, so a runner restarted
after `kill -9` adopts it and `drill program stop` without a runner still stops it.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drill import machine, native
from drill.lab import processes as procs
from drill.scenarios import Program

# A quarter of verify's users: a steady trickle that still shows each defect on the dashboards
# (the chain sticks with 4 shoppers on 8 workers; one shipped feed read holds it for 1 s).
BACKGROUND_SHARE = 0.25
# SIGTERM lets Locust stop its users at once (no --stop-timeout); the rollback has 2 s in all.
STOP_GRACE_S = 1.0
# A Locust that died is started again, but not more often than this (no restart storm).
RESTART_AFTER_S = 10.0
# verify's recorder files: background traffic must never write them.
RECORDER_VARIABLES = ("DRILL_SAMPLES", "DRILL_GROUND_TRUTH", "DRILL_ACTED", "DRILL_LOAD_STARTED")


@dataclass(frozen=True)
class TrafficProcess:
    """A background Locust: its scenario, process, and the locustfile that proves it is ours."""

    scenario: str
    pid: int
    locustfile: str
    users: int
    started: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, scenario: str, raw: Any) -> TrafficProcess | None:
        try:
            process = cls(
                scenario=scenario,
                pid=int(raw["pid"]),
                locustfile=str(raw["locustfile"]),
                users=int(raw.get("users", 0)),
                started=str(raw.get("started", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None
        # kill(0) and kill(-1) signal whole groups, and pid 1 is init: never take those from a file.
        return process if process.pid > 1 else None


@dataclass(frozen=True)
class TrafficEvent:
    """A journal line to write: traffic_started or traffic_stopped, with its fields."""

    kind: str
    fields: dict[str, Any]


def background_users(verify_users: int) -> int:
    return max(1, math.ceil(verify_users * BACKGROUND_SHARE))


def owned(process: TrafficProcess) -> bool:
    """Whether the recorded pid still runs our Locust (a reused pid runs something else)."""
    if not procs.alive(process.pid):
        return False
    command = procs.cmdline(process.pid)
    return command is not None and "locust" in command and process.locustfile in command


def stop_processes(processes: list[TrafficProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to each one's group at once, SIGKILL to what is left after `grace` seconds; a
    process already gone is fine. All together: three scenarios stop within one grace."""
    mine = [process for process in processes if owned(process)]
    for process in mine:
        # start_new_session made Locust its group's leader: its gevent workers go with it.
        procs.send(process.pid, signal.SIGTERM)
    for signum, wait in ((signal.SIGKILL, grace), (None, 1.0)):
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(procs.alive(p.pid) for p in mine):
            time.sleep(0.02)
        mine = [process for process in mine if procs.alive(process.pid)]
        if signum is not None:
            for process in mine:
                procs.send(process.pid, signum)


class Traffic:
    """The background Locust processes of one run, brought to the scenarios a phase wants."""

    def __init__(
        self,
        config: native.LabConfig,
        program: Program,
        log_dir: Path,
        records: Mapping[str, TrafficProcess] | None = None,
    ) -> None:
        self.config = config
        self.program = program
        self.log_dir = log_dir
        # Adopt what a previous runner of this run left running; forget what died.
        self.running: dict[str, TrafficProcess] = {
            name: process for name, process in (records or {}).items() if owned(process)
        }
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._failed_at: dict[str, float] = {}

    def records(self) -> dict[str, dict[str, Any]]:
        return {name: process.to_json() for name, process in self.running.items()}

    def reconcile(self, wanted: frozenset[str]) -> list[TrafficEvent]:
        """Start what the phase wants and is not running, stop the rest; returns what happened."""
        events: list[TrafficEvent] = []
        unwanted = sorted(name for name in self.running if name not in wanted)
        stop_processes([self.running[name] for name in unwanted])
        for name in unwanted:
            self._reap(self.running.pop(name).pid)
            events.append(TrafficEvent("traffic_stopped", {"scenario": name}))
        for name, process in list(self.running.items()):
            if not self._alive(process):
                code = self._reap(process.pid)
                del self.running[name]
                self._failed_at[name] = time.monotonic()
                why = f"Locust exited (code {code}); see {self._log_path(name)}"
                events.append(TrafficEvent("traffic_stopped", {"scenario": name, "reason": why}))
        for name in sorted(wanted - self.running.keys()):
            failed = self._failed_at.get(name)
            if failed is not None and time.monotonic() - failed < RESTART_AFTER_S:
                continue
            process = self._start(name)
            self.running[name] = process
            fields = {"scenario": name, "users": process.users, "pid": process.pid}
            events.append(TrafficEvent("traffic_started", fields))
        return events

    def stop_all(self) -> list[TrafficEvent]:
        return self.reconcile(frozenset())

    def _alive(self, process: TrafficProcess) -> bool:
        child = self._children.get(process.pid)
        if child is not None:
            return child.poll() is None
        return owned(process)

    def _reap(self, pid: int) -> int | None:
        child = self._children.pop(pid, None)
        if child is None:
            return None
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def _log_path(self, scenario: str) -> Path:
        return self.log_dir / f"traffic-{scenario}.log"

    def _start(self, scenario: str) -> TrafficProcess:
        load = self.program.scenario(scenario).load
        locustfile = str(self.config.root / load.locustfile)
        users = background_users(load.users)
        host = native.endpoints(self.config)[load.host]
        command = [
            sys.executable, "-m", "locust",
            "-f", locustfile,
            "--headless", "--only-summary",
            "--host", host,
            "--users", str(users),
            "--spawn-rate", str(users),
            "--loglevel", "WARNING",
            load.user,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in RECORDER_VARIABLES}
        env.update(
            DRILL_STATE_DIR=str(self.config.state_dir),
            DRILL_RUN_ID=f"background-{scenario}",
            DRILL_CLIENT_TIMEOUT_S=str(load.client_timeout or ""),
            PYTHONUNBUFFERED="1",
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self._log_path(scenario), "ab") as log:
            # A subprocess: importing Locust would monkey-patch the runner with gevent.
            child = subprocess.Popen(
                machine.pinned(command),
                cwd=self.config.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[child.pid] = child
        started = datetime.now(UTC).isoformat(timespec="seconds")
        return TrafficProcess(scenario, child.pid, locustfile, users, started)
