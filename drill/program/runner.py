"""The runner: a reconciler that brings the lab to the wanted state of (program, clock).

Every tick (0.5 s of wall time) it reads clock.json, computes `wanted`, journals what the run's
journal still lacks (phase changes, hints, messages), replaces the program's flag layer with
the wanted flags in one locked write, and starts or stops background traffic. Nothing is
replayed: the journal and the live state say what is done. A runner killed with `kill -9` and
started again lands where the clock says on its first tick; a stop always ends in the rollback
(program layer cleared, traffic stopped, program_stopped journaled).

Files under `<state dir>/program/`: clock.json (the clock; the CLI changes it, the runner reads
it), run.json (seed, pid, options, traffic processes), journal.jsonl, runner.log, and the
traffic logs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from drill import native
from drill.agenda import REVEAL_FLAG, Phase, format_clock
from drill.lab import processes, runfiles
from drill.lab.paths import PathUnder
from drill.program.annotations import Annotator
from drill.program.api import HOST, RUNNER_PORT, ApiServer, Board, create_app
from drill.program.clock import ProgramClock
from drill.program.journal import Event, Journal
from drill.program.plan import Wanted, pending_events, wanted
from drill.program.team_api import install
from drill.program.teams import Workshop
from drill.program.traffic import Traffic, TrafficEvent, TrafficProcess
from drill.scenarios import Program, load_program
from faults import (
    PROGRAM,
    Catalog,
    FlagSetting,
    clear_layer,
    file_lock,
    load_catalog,
    replace_layer,
    split_setting,
)

TICK_S = 0.5
RUNNER = "runner"
log = logging.getLogger("drill.program")


class ProgramError(Exception):
    """A program command that cannot be done; the message says what to do."""


@dataclass(frozen=True)
class ProgramFiles:
    """Where one lab's program state lives."""

    directory: Path

    @classmethod
    def of(cls, state_dir: Path) -> ProgramFiles:
        return cls(state_dir / "program")

    clock = PathUnder("directory", "clock.json")
    run = PathUnder("directory", "run.json")
    journal = PathUnder("directory", "journal.jsonl")
    log = PathUnder("directory", "runner.log")
    annotations = PathUnder("directory", "annotations.json")

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The lock that start, stop and the clock commands hold (the runner only reads)."""
        return file_lock(self.directory / ".lock")

    def read_clock(self) -> ProgramClock | None:
        """The clock, None when there is no program; a damaged file raises ValueError."""
        try:
            return ProgramClock.from_json(self.clock.read_text())
        except FileNotFoundError:
            return None

    def write_clock(self, clock: ProgramClock) -> None:
        runfiles.write_text(self.clock, clock.to_json() + "\n")

    def read_run(self) -> dict[str, Any]:
        try:
            document = json.loads(self.run.read_text())
        except (OSError, ValueError):
            return {}
        return document if isinstance(document, dict) else {}

    def write_run(self, document: dict[str, Any]) -> None:
        runfiles.write_json(self.run, document)

    def update_run(self, **fields: Any) -> dict[str, Any]:
        """Change some of run.json's fields: the runner and start may both write it."""
        with file_lock(self.directory / ".run.lock"):
            document = {**self.read_run(), **fields}
            self.write_run(document)
        return document

    def traffic_records(self) -> dict[str, TrafficProcess]:
        raw = self.read_run().get("traffic")
        records = {}
        for name, entry in (raw if isinstance(raw, dict) else {}).items():
            process = TrafficProcess.from_json(str(name), entry)
            if process is not None:
                records[process.scenario] = process
        return records


def runner_alive(files: ProgramFiles) -> int | None:
    """The pid of the live runner of this lab, if one runs."""
    pid = files.read_run().get("pid")
    if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
        return None
    if not processes.alive(pid):
        return None
    # A reused pid runs something else: ours names the drill program runner.
    command = processes.cmdline(pid) or ""
    return pid if "drill" in command and "program" in command else None


class ClockGone(Exception):
    """clock.json was removed under the runner: the program is over."""


class Runner:
    """One run's reconciler; `tick(now)` is the whole algorithm, `rollback` the way out."""

    def __init__(
        self,
        config: native.LabConfig,
        program: Program,
        catalog: Catalog,
        seed: int,
        *,
        traffic: Traffic | None = None,
        annotator: Annotator | None = None,
        board: Board | None = None,
        workshop: Workshop | None = None,
    ) -> None:
        self.config = config
        self.program = program
        self.catalog = catalog
        self.seed = seed
        self.files = ProgramFiles.of(config.state_dir)
        self.journal = Journal(self.files.journal)
        self.traffic = traffic
        self.annotator = annotator
        self.board = board
        self.workshop = workshop
        self._noted_live: set[str] = set()
        self.clock: ProgramClock | None = None
        self.state: Wanted | None = None

    # -- the tick ---------------------------------------------------------------------------

    def tick(self, now: datetime) -> Wanted:
        """Bring the lab to where the clock says; returns the wanted state it reconciled to."""
        clock = self._read_clock()
        elapsed = clock.elapsed(now)
        state = wanted(self.program, elapsed, self.seed)
        events = list(self.journal.read().events)
        # Program time that ran since the last journaled entry (a slow tick, a sleeping laptop,
        # a restart) is walked in order, so each phase change gets its own line; time jumped
        # over with goto is named in the landing phase's `passed`.
        for at in self._checkpoints(events, clock, elapsed):
            self._journal_pending(events, wanted(self.program, at, self.seed), now)
        self._journal_pending(events, state, now)
        self._reconcile_flags(state, now)
        self._reconcile_traffic(state, now)
        self.clock, self.state = clock, state
        self._publish(clock, state)
        return state

    def _read_clock(self) -> ProgramClock:
        try:
            clock = self.files.read_clock()
        except ValueError as exc:
            if self.clock is None:
                raise
            log.warning("clock.json unreadable (%s); keeping the last good clock", exc)
            return self.clock
        if clock is None:
            raise ClockGone("clock.json was removed")
        return clock

    def _checkpoints(
        self, events: Sequence[Event], clock: ProgramClock, elapsed: float
    ) -> list[float]:
        last: Any = None
        for event in events:
            if event.kind == "program_started":
                last = None
            elif event.kind == "phase_changed":
                last = event.fields.get("index")
        since = float(clock.at)
        if isinstance(last, int) and 0 <= last < len(self.program.agenda):
            since = max(since, self.program.agenda[last].start)
        times = {float(entry.start) for entry in self.program.agenda}
        for entry in self.program.agenda:
            if isinstance(entry, Phase):
                times.update(float(entry.start + action.at) for action in entry.actions)
        return sorted(t for t in times | {since} if since <= t < elapsed)

    def _journal_pending(self, events: list[Event], state: Wanted, now: datetime) -> None:
        for kind, fields in pending_events(self.program, events, state):
            if kind == "phase_changed":
                fields["at"] = format_clock(state.elapsed)
            events.append(self.journal.append(kind, RUNNER, now, **fields))
            if kind == "phase_changed" and self.annotator is not None:
                entry = fields["entry"]
                self.annotator.phase(now, f"{fields['type']}: {entry}" if entry else None)

    def _reconcile_flags(self, state: Wanted, now: datetime) -> None:
        entry = state.entry.name if state.entry is not None else "finished"
        change = replace_layer(
            self.config.state_dir, self.catalog, PROGRAM, dict(state.flags), by=f"program: {entry}"
        )
        for flag, (variant, percent) in sorted(change.set.items()):
            # A decoy's flag also says where it lands (service, route).
            where = split_setting(state.flags[flag])[2] if flag in state.flags else None
            self._journal_flag(flag, variant, percent, now, entry, where, state.reveal)
        for flag in change.cleared:
            default = self.catalog[flag].default_variant
            self._journal_flag(flag, default, None, now, entry, None, state.reveal)

    def _journal_flag(
        self,
        flag: str,
        variant: str,
        percent: float | None,
        now: datetime,
        why: str,
        where: dict[str, str] | None = None,
        reveal: bool = False,
    ) -> None:
        fields: dict[str, Any] = {
            "flag": flag,
            "variant": variant,
            "percent": percent,
            "layer": PROGRAM,
            "entry": why,
        }
        if where:
            fields["where"] = where
        self.journal.append("flag_changed", RUNNER, now, **fields)
        if flag == REVEAL_FLAG:
            self.journal.append("reveal_changed", RUNNER, now, reveal=variant)
        if self.annotator is None:
            return
        # Dashboards are the teams' view, and the dark room keeps them dark: a flag change is
        # marked on them only in reveal mode. When reveal mode comes on, the changes made
        # before it are marked at the times they happened, for the debrief.
        if flag == REVEAL_FLAG and reveal:
            self._annotate_earlier_flags(now)
        if reveal:
            self.annotator.point(now, _flag_text(flag, variant, percent, where), ("flag",))

    def _annotate_earlier_flags(self, now: datetime) -> None:
        assert self.annotator is not None
        run: list[Event] = []
        for event in self.journal.read().events:
            if event.kind == "program_started":
                run = []
            elif event.kind == "flag_changed" and event.ts < now:
                run.append(event)
        for event in run:
            fields = event.fields
            if fields.get("flag") == REVEAL_FLAG:
                continue
            text = _flag_text(
                str(fields.get("flag")), str(fields.get("variant")),
                fields.get("percent"), fields.get("where"),
            )  # fmt: skip
            self.annotator.point(event.ts, text, ("flag",))

    def _reconcile_traffic(self, state: Wanted, now: datetime) -> None:
        if self.traffic is None:
            return
        self._journal_traffic(self.traffic.reconcile(state.traffic), now)

    def _journal_traffic(self, changes: list[TrafficEvent], now: datetime) -> None:
        if not changes or self.traffic is None:
            return
        for change in changes:
            self.journal.append(change.kind, RUNNER, now, **change.fields)
        if self.files.run.exists():
            self.files.update_run(traffic=self.traffic.records())

    def _publish(self, clock: ProgramClock, state: Wanted) -> None:
        newly_live = [name for name in state.live if name not in self._noted_live]
        if self.workshop is not None and newly_live:
            # Before the board shows it live: a claim on it then has a start to count from.
            self.workshop.note_live(newly_live, state.elapsed, datetime.now(UTC))
            self._noted_live.update(newly_live)
        if self.board is None:
            return
        snapshot = snapshot_of(self.program, clock, state, self.seed)
        snapshot["running"] = True
        snapshot["pid"] = os.getpid()
        snapshot["traffic"] = sorted(self.traffic.running) if self.traffic is not None else []
        self.board.publish(snapshot)

    # -- the way out ------------------------------------------------------------------------

    def rollback(self, reason: str, by: str = RUNNER, now: datetime | None = None) -> None:
        """Every program flag off, traffic stopped, program_stopped journaled; always completes."""
        now = now or datetime.now(UTC)
        try:
            for flag in clear_layer(self.config.state_dir, self.catalog, PROGRAM):
                self._journal_flag(flag, self.catalog[flag].default_variant, None, now, reason)
        finally:
            try:
                if self.traffic is not None:
                    self._journal_traffic(self.traffic.stop_all(), now)
            finally:
                if self.annotator is not None:
                    self.annotator.close(now)
                self.journal.append("program_stopped", by, now, reason=reason)
                if self.board is not None:
                    self.board.publish({"running": False, "reason": reason})


def _flag_json(setting: FlagSetting) -> dict[str, Any]:
    variant, percent, where = split_setting(setting)
    return {"variant": variant, "percent": percent, **({"where": where} if where else {})}


def snapshot_of(program: Program, clock: ProgramClock, state: Wanted, seed: int) -> dict[str, Any]:
    """The program's state as JSON-ready data: for `GET /program`, metrics and status."""
    entry, following = state.entry, state.next_entry
    return {
        "elapsed": state.elapsed,
        "at": format_clock(state.elapsed),
        "index": state.index,
        "entry": entry.name if entry is not None else None,
        "type": "finished" if entry is None else "phase" if isinstance(entry, Phase) else "break",
        "time_left": state.time_left,
        "next": following.name if following is not None else None,
        "next_type": None
        if following is None
        else "phase"
        if isinstance(following, Phase)
        else "break",
        "next_questions": list(getattr(following, "questions", []) or []),
        "checkpoint": getattr(entry, "checkpoint", None),
        "questions": list(state.questions),
        "live": list(state.live),
        "drawn": list(state.drawn),
        "flags": {key: _flag_json(setting) for key, setting in sorted(state.flags.items())},
        "decoys": [
            {
                "kind": d.kind,
                "service": d.service,
                "route": d.route,
                "percent": d.percent,
                "start": format_clock(d.start),
                "end": format_clock(d.end),
            }
            for d in state.decoys
        ],
        "wanted_traffic": sorted(state.traffic),
        "hints": [{"scenario": h.scenario, "hint": h.number, "text": h.text} for h in state.hints],
        "reveal": state.reveal,
        "paused": clock.paused,
        "speed": clock.speed,
        "seed": seed,
        "length": program.length,
    }


# -- the runner process -----------------------------------------------------------------------


def load(config: native.LabConfig) -> tuple[Program, Catalog]:
    catalog = load_catalog()
    return load_program(config.root / "scenarios.yaml", catalog), catalog


def serve(config: native.LabConfig) -> int:
    """The runner process: tick until the program finishes or a signal stops it, then roll back;
    returns the exit code (an exception propagates after the rollback).

    `drill program start` has written clock.json and run.json. SIGTERM and SIGINT end the loop
    at once (the tick in progress completes) and the rollback runs in a finally.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    files = ProgramFiles.of(config.state_dir)
    program, catalog = load(config)
    run = files.read_run()
    stop = threading.Event()
    reason = ["stopped"]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        reason[0] = f"stopped ({signal.Signals(signum).name})"
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    journal = Journal(files.journal)
    board = Board()
    workshop = Workshop(files.directory, program, journal)
    traffic = None
    if run.get("traffic_enabled", True):
        traffic = Traffic(config, program, files.directory, files.traffic_records())
    annotator = None
    if run.get("annotations", True):
        annotator = Annotator(
            files.annotations, lambda text: _note(journal, text), url=run.get("grafana_url")
        )
    runner = Runner(
        config,
        program,
        catalog,
        int(run.get("seed", 0)),
        traffic=traffic,
        annotator=annotator,
        board=board,
        workshop=workshop,
    )
    port = RUNNER_PORT + config.port_offset
    app = create_app(board, program.agenda_scenarios())
    install(app, workshop, notes_dir=config.root / "solutions", log_dir=config.log_dir)
    servers: list[ApiServer] = []
    for host in listen_hosts(run.get("listen")):
        server = ApiServer(app, port, host)
        try:
            server.start()
        except OSError as exc:
            _note(journal, f"cannot listen on {server.url} ({exc.strerror}): no API or /metrics")
        else:
            servers.append(server)
    files.update_run(
        pid=os.getpid(),
        api=[server.url for server in servers],
        traffic=traffic.records() if traffic is not None else {},
    )
    try:
        failing = ready = False
        while not stop.is_set():
            try:
                state = runner.tick(datetime.now(UTC))
                failing = False
            except ClockGone:
                reason[0] = "stopped (clock.json removed)"
                break
            except Exception as exc:  # a bad tick must not end the workshop: log, retry
                log.error("tick failed:\n%s", traceback.format_exc())
                if not failing:
                    _note(journal, f"a tick failed ({type(exc).__name__}: {exc}); retrying")
                failing = True
            else:
                if state.finished:
                    reason[0] = "finished"
                    break
            finally:
                if not ready:
                    # `drill program start` waits for the first tick, failed or not.
                    files.update_run(ready=True, first_tick="failed" if failing else "ok")
                    ready = True
            stop.wait(TICK_S)
    finally:
        try:
            runner.rollback(reason[0])
            with files.locked():
                # Stopped means the program is over: a later start begins a fresh one.
                if files.read_run().get("pid") == os.getpid():
                    files.clock.unlink(missing_ok=True)
                    files.run.unlink(missing_ok=True)
        finally:
            for server in servers:
                server.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            log.info("runner stopped: %s", reason[0])
    return 0


def listen_hosts(listen: str | None) -> list[str]:
    """Loopback, and the run's --listen address; an unspecified one (0.0.0.0) covers both."""
    if not listen:
        return [HOST]
    if ipaddress.ip_address(listen).is_unspecified:
        return [listen]
    return list(dict.fromkeys([HOST, listen]))


def _flag_text(flag: str, variant: str, percent: float | None, where: dict[str, str] | None) -> str:
    share = f" for {percent:g}%" if percent is not None else ""
    on = "".join(f" {k}={v}" for k, v in (where or {}).items())
    return f"{flag} = {variant}{share}{on} (program)"


def _note(journal: Journal, text: str) -> None:
    journal.append("note", RUNNER, text=text)


def main() -> None:
    """`python -m drill.program.runner`: the detached runner `drill program start` launches."""
    config = native.LabConfig.from_env(Path(os.environ["DRILL_ROOT"]))
    raise SystemExit(serve(config))


if __name__ == "__main__":
    main()
