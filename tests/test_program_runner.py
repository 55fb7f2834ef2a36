"""The runner: a reconciler that brings the program layer, the journal and traffic to (program,
clock), converges after a restart, and always rolls back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from drill import native
from drill.cli import app
from drill.lab import processes
from drill.program import control
from drill.program.annotations import Annotator
from drill.program.api import RUNNER_PORT, Board, create_app, interface_address
from drill.program.journal import Event, Journal
from drill.program.plan import wanted
from drill.program.runner import (
    ProgramError,
    ProgramFiles,
    Runner,
    listen_hosts,
    load,
    snapshot_of,
)
from drill.program.traffic import Traffic, background_users
from faults import (
    INSTRUCTOR,
    PROGRAM,
    FlagSetting,
    describe,
    layer_flags,
    load_catalog,
    read_document,
    set_layer_flags,
    state_path,
    verify_overlay,
)
from tests.conftest import REPO_ROOT
from tests.servers import QuietHandler, closed_url, serving

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()
AGENDA_LENGTH = 8  # entries in scenarios.yaml's agenda


def hms(text: str) -> int:
    hours, minutes, *seconds = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + sum(seconds)


@pytest.fixture
def config(tmp_path: Path) -> native.LabConfig:
    return native.LabConfig(REPO_ROOT, tmp_path / "state")


def new_runner(config: native.LabConfig, **options: Any) -> Runner:
    """A runner object for the run control.prepare wrote: what a fresh runner process builds."""
    program, catalog = load(config)
    seed = int(ProgramFiles.of(config.state_dir).read_run()["seed"])
    return Runner(config, program, catalog, seed, **options)


def program_layer(config: native.LabConfig) -> dict[str, FlagSetting]:
    """The program layer's settings, as `wanted` gives them: a decoy's with its `where`."""
    return {
        key: entry.setting if entry.where else (entry.variant, entry.percent)
        for key, entry in layer_flags(config.state_dir, CATALOG, PROGRAM).items()
    }


def served(config: native.LabConfig) -> dict[str, tuple[str, float | None]]:
    """The flags services read that are not at their default."""
    flags = read_document(state_path(config.state_dir), CATALOG)["flags"]
    on = {key: (describe(d)[0], describe(d)[2]) for key, d in flags.items()}
    return {k: v for k, v in on.items() if v != (CATALOG[k].default_variant, None)}


def events(config: native.LabConfig, kind: str | None = None) -> list[Event]:
    read = Journal(ProgramFiles.of(config.state_dir).journal).read().events
    return [e for e in read if kind is None or e.kind == kind]


def phase_indexes(config: native.LabConfig) -> list[Any]:
    return [e.fields["index"] for e in events(config, "phase_changed")]


def at_program(speed: float, program_time: str) -> datetime:
    """The wall time at which a run started at T0 with `speed` reaches `program_time`."""
    return T0 + timedelta(seconds=hms(program_time) / speed)


def runner_ticked_at(config: native.LabConfig, program_time: str) -> Runner:
    """A runner of a program prepared at T0 (no traffic, no annotations) after one tick at
    `program_time` at speed 1."""
    control.prepare(config, traffic=False, annotations=False, now=T0)
    runner = new_runner(config)
    runner.tick(at_program(1, program_time))
    return runner


def test_the_program_layer_holds_exactly_what_is_wanted_at_each_time(
    config: native.LabConfig,
) -> None:
    """At chosen times the program layer, and what services read, equal `wanted`'s flags."""
    started = control.prepare(config, traffic=False, annotations=False, now=T0)
    runner = new_runner(config)
    seen_any = False
    for moment in ("0:00", "0:14:59", "0:15", "0:40", "1:05", "1:30", "2:35", "2:55"):
        runner.tick(at_program(1, moment))
        expected = wanted(runner.program, hms(moment), started.seed).flags
        assert program_layer(config) == dict(expected), moment
        assert served(config) == {k: setting[:2] for k, setting in expected.items()}, moment
        seen_any = seen_any or bool(expected)
    assert seen_any, "the agenda turns triggers on somewhere"
    assert program_layer(config) == {"lab.reveal": ("on", None)}, "wrap-up stays revealed"


@pytest.mark.parametrize("tick_s", [0.5, 5.0])
def test_a_fast_run_journals_every_phase_change_once_and_in_order(
    config: native.LabConfig, tick_s: float
) -> None:
    """At --speed 600 one tick is 300 program seconds (3,000 when ticks are 5 s apart, as on a
    loaded laptop: several entries per tick), yet every entry gets its own line, in order, each
    hint and message once, and reveal_changed when the debrief turns it on."""
    control.prepare(config, speed=600, traffic=False, annotations=False, now=T0)
    runner = new_runner(config)
    now = T0
    while not runner.tick(now).finished:
        now += timedelta(seconds=tick_s)
    assert phase_indexes(config) == [*range(AGENDA_LENGTH), None]
    assert all("passed" not in e.fields for e in events(config, "phase_changed"))
    hints = [(e.fields["scenario"], e.fields["hint"]) for e in events(config, "hint_released")]
    assert len(hints) == 3 and len(set(hints)) == 3
    keys = [e.fields["key"] for e in events(config, "message_shown")]
    assert len(keys) == 4 and len(set(keys)) == 4
    # Flags follow the ticks (a debrief no tick lands in is never switched on); the journal of
    # one-off events does not.
    reveals = [e.fields["reveal"] for e in events(config, "reveal_changed")]
    assert reveals == ["on", "off"]
    order = [
        e.fields.get("index", f"hint {e.fields.get('hint')}")
        for e in events(config)
        if e.kind in ("phase_changed", "hint_released")
    ]
    assert order == [0, 1, 2, 3, "hint 1", "hint 2", 4, 5, "hint 3", 6, 7, None]


def test_a_restarted_runner_converges_on_its_first_tick_and_journals_nothing_twice(
    config: native.LabConfig,
) -> None:
    """A runner killed in phase 1 (no rollback) and a new one started at 2:05 lands there on
    one tick: flags as wanted, each passed entry and hint journaled once, a resume note."""
    first = runner_ticked_at(config, "0:20")
    first.tick(at_program(1, "0:21"))
    before = len(events(config))
    # kill -9: nothing runs any more; the clock keeps going. `start` finds clock.json.
    resumed = control.prepare(config, traffic=False, annotations=False, now=at_program(1, "2:05"))
    assert resumed.resumed
    second = new_runner(config)
    state = second.tick(at_program(1, "2:05"))
    assert program_layer(config) == dict(state.flags) and state.entry is not None
    assert state.entry.name == "3: AI-assisted fix"
    assert phase_indexes(config) == [0, 1, 2, 3, 4, 5]
    assert len(events(config, "program_started")) == 1
    notes = [e for e in events(config, "note") if e.fields.get("action") == "resume_run"]
    assert len(notes) == 1
    after_one = len(events(config))
    assert after_one > before
    second.tick(at_program(1, "2:05:01"))
    second.tick(at_program(1, "2:05:02"))
    assert len(events(config)) == after_one, "a tick with nothing new journals nothing"
    counted = Counter(
        (e.kind, e.fields.get("index"), e.fields.get("hint"), e.fields.get("key"))
        for e in events(config)
        if e.kind in ("phase_changed", "hint_released", "message_shown")
    )
    assert max(counted.values()) == 1


def test_goto_names_the_entries_it_jumps_over_and_pause_holds_the_clock(
    config: native.LabConfig,
) -> None:
    """goto lands in one phase_changed naming what it passed; a paused clock stands still."""
    runner = runner_ticked_at(config, "0:16")
    jumped = at_program(1, "0:17")
    control.change_clock(config, "goto", "AI-assisted", now=jumped)
    runner.tick(jumped)
    last = events(config, "phase_changed")[-1]
    assert last.fields["index"] == 5
    assert last.fields["passed"] == [
        "first tea break",
        "2: deep dive and verification",
        "second tea break",
    ]
    assert len(events(config, "hint_released")) == 3, "hints before it are released, once"
    control.change_clock(config, "pause", now=jumped)
    state = runner.tick(jumped + timedelta(hours=1))
    assert state.elapsed == hms("2:00") and state.entry is not None
    control.change_clock(config, "resume", now=jumped + timedelta(hours=1))
    control.change_clock(config, "next", now=jumped + timedelta(hours=1))
    assert runner.tick(jumped + timedelta(hours=1)).elapsed == hms("2:30")
    actions = [e.fields.get("action") for e in events(config, "note") if e.by == "instructor"]
    assert actions == ["goto", "pause", "resume", "next"]


def test_stop_clears_the_program_layer_and_leaves_the_instructors(
    config: native.LabConfig,
) -> None:
    """The rollback takes every program flag out; the instructor's flag stays live."""
    control.prepare(config, traffic=False, annotations=False, now=T0)
    set_layer_flags(config.state_dir, CATALOG, INSTRUCTOR, {"feed.heavy_users": ("on", None)})
    runner = new_runner(config)
    runner.tick(at_program(1, "0:20"))
    assert len(program_layer(config)) >= 1
    runner.rollback("stopped")
    assert program_layer(config) == {}
    assert served(config) == {"feed.heavy_users": ("on", None)}
    stopped = events(config, "program_stopped")
    assert [e.fields["reason"] for e in stopped] == ["stopped"]
    offs = [e for e in events(config, "flag_changed") if e.fields["entry"] == "stopped"]
    assert offs and all(e.fields["variant"] == "off" for e in offs)


def test_stop_without_a_runner_rolls_back_a_crashed_run(config: native.LabConfig) -> None:
    """`drill program stop` after a kill -9 clears the program layer and ends the run."""
    control.prepare(config, traffic=False, annotations=False, now=datetime.now(UTC))
    new_runner(config).tick(datetime.now(UTC) + timedelta(minutes=20))
    assert program_layer(config)
    message = control.stop(config)
    assert "no runner was running" in message
    assert program_layer(config) == {} and served(config) == {}
    files = ProgramFiles.of(config.state_dir)
    assert not files.clock.exists() and not files.run.exists()
    assert len(events(config, "program_stopped")) == 1
    assert "nothing to roll back" in control.stop(config)


def test_a_verify_overlay_during_a_phase_leaves_the_programs_flags_as_they_were(
    config: native.LabConfig,
) -> None:
    """While verify overlays the flags the runner keeps ticking without a change; afterwards
    services read the program's flags again."""
    runner = runner_ticked_at(config, "0:20")
    program_flags = program_layer(config)
    assert program_flags
    changes_before = len(events(config, "flag_changed"))
    overlay = {"chain.fraud_callback": ("on", None)}
    with verify_overlay(config.state_dir, CATALOG, overlay, by="verify circular-deadlock"):
        runner.tick(at_program(1, "0:21"))
        runner.tick(at_program(1, "0:22"))
        assert served(config) == overlay
        assert program_layer(config) == program_flags
    assert len(events(config, "flag_changed")) == changes_before
    assert served(config) == program_flags


def test_a_program_layer_cleared_by_hand_is_restored_on_the_next_tick(
    config: native.LabConfig,
) -> None:
    """`drill flags reset --all` mid-phase: the next tick sets the program's flags again."""
    runner = runner_ticked_at(config, "0:20")
    wanted_flags = program_layer(config)
    result = CliRunner().invoke(
        app,
        ["flags", "reset", "--all", "--root", str(REPO_ROOT)],
        env={"DRILL_STATE_DIR": str(config.state_dir)},
    )
    assert result.exit_code == 0, result.output
    assert program_layer(config) == {}
    runner.tick(at_program(1, "0:21"))
    assert program_layer(config) == wanted_flags


def test_status_shows_the_phase_time_left_and_the_coming_breaks_questions(
    config: native.LabConfig,
) -> None:
    """`drill program status` prints the entry, time left, next entry, triggers and questions."""
    control.prepare(config, traffic=False, annotations=False, now=datetime.now(UTC))
    control.change_clock(config, "goto", "0:40")
    control.change_clock(config, "pause")
    new_runner(config).tick(datetime.now(UTC))
    result = CliRunner().invoke(
        app,
        ["program", "status", "--root", str(REPO_ROOT)],
        env={"DRILL_STATE_DIR": str(config.state_dir), "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for text in (
        "1: dark room investigation",
        "20:00",
        "first tea break",
        "PAUSED",
        "What early signals did you observe?",
        "What did you rule out",
        "no runner is running",
    ):
        assert text in result.output, text
    flag = next(iter(program_layer(config)))
    assert flag in result.output


def test_the_room_view_hides_the_culprit_and_decoys_until_reveal_mode(
    config: native.LabConfig,
) -> None:
    """`status --room` (the projector) names no culprit, trigger or decoy in the dark room, and
    names them in the post-mortem, when reveal mode is on."""
    control.prepare(config, traffic=False, annotations=False, now=datetime.now(UTC))
    env = {"DRILL_STATE_DIR": str(config.state_dir), "COLUMNS": "200"}
    command = ["program", "status", "--room", "--root", str(REPO_ROOT)]
    program, _ = load(config)
    [culprit] = wanted(program, hms("0:30"), 2026).drawn
    secrets = [culprit, *(t.flag for t in program.scenarios[culprit].triggers), "generic."]
    control.change_clock(config, "goto", "0:30")  # the dark room, a decoy live
    control.change_clock(config, "pause")
    new_runner(config).tick(datetime.now(UTC))
    assert any(flag.startswith("generic.") for flag in program_layer(config))
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 0, result.output
    assert "1: dark room investigation" in result.output and "hidden until reveal" in result.output
    assert [s for s in secrets if s in result.output] == []
    control.change_clock(config, "goto", "2:35")  # the post-mortem: reveal mode
    new_runner(config).tick(datetime.now(UTC))
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 0, result.output
    assert culprit in result.output and "hidden until reveal" not in result.output


def test_the_api_serves_the_phase_as_metrics_and_json() -> None:
    """/metrics carries drill_program_phase, seconds left and live scenarios; /program the JSON."""
    config = native.LabConfig(REPO_ROOT)
    program, _ = load(config)
    from drill.program.clock import ProgramClock

    clock = ProgramClock.start(T0, hms("0:20"))
    snapshot = snapshot_of(program, clock, wanted(program, hms("0:20"), 2026), 2026)
    board = Board()
    board.publish({**snapshot, "running": True, "traffic": []})
    with TestClient(create_app(board, program.agenda_scenarios())) as client:
        text = client.get("/metrics").text
        assert 'drill_program_phase_info{index="1",phase="1: dark room investigation"' in text
        assert "drill_program_seconds_left 2400.0" in text
        live = snapshot["live"][0]
        # The dark room: the count, and no name, in the metrics and the JSON alike.
        assert "drill_program_live_scenarios 1.0" in text
        assert f'drill_program_live_scenario{{scenario="{live}"}} 0.0' in text
        body = client.get("/program").json()
        assert body["entry"] == "1: dark room investigation" and body["next"] == "first tea break"
        assert not {"drawn", "live", "flags", "decoys"} & set(body)
        for trigger in program.scenarios[live].triggers:
            assert trigger.flag not in json.dumps(body)
        assert live not in json.dumps(body["hints"])
    # The post-mortem turns reveal mode on: now the room may know.
    post_mortem = hms("2:35")
    clock = ProgramClock.start(T0, post_mortem)
    snapshot = snapshot_of(program, clock, wanted(program, post_mortem, 2026), 2026)
    assert snapshot["reveal"] and snapshot["live"] == [live]
    board.publish({**snapshot, "running": True, "traffic": []})
    with TestClient(create_app(board, program.agenda_scenarios())) as client:
        text = client.get("/metrics").text
        assert f'drill_program_live_scenario{{scenario="{live}"}} 1.0' in text
        body = client.get("/program").json()
        assert body["live"] == [live] and body["flags"] == snapshot["flags"]
    # A second app registers its metrics again without a clash.
    create_app(Board(), program.agenda_scenarios())


# -- annotations against an HTTP server of the test's own (Grafana does not run here) --------


class _Grafana(QuietHandler):
    """Answers annotation calls like Grafana (an id per POST), or 503 while `down`."""

    calls: list[tuple[str, str, dict[str, Any]]] = []
    down: list[bool] = [False]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.down[0]:
            self.reply(503)
            return
        self.calls.append((self.command, self.path, body))
        posts = sum(method == "POST" for method, _, _ in self.calls)
        self.reply(200, json.dumps({"id": posts, "message": "ok"}).encode())

    do_POST = do_PATCH = _answer


Calls = list[tuple[str, str, dict[str, Any]]]


@pytest.fixture
def grafana() -> Iterator[tuple[str, Calls, list[bool]]]:
    calls: Calls = []
    down = [False]
    with serving(type("Handler", (_Grafana,), {"calls": calls, "down": down})) as url:
        yield url, calls, down


def journal_note(config: native.LabConfig) -> Any:
    journal = Journal(ProgramFiles.of(config.state_dir).journal)
    return lambda text: journal.append("note", "runner", text=text)


def test_phase_changes_become_regions_and_flag_changes_points(
    config: native.LabConfig, grafana: tuple[str, Calls, list[bool]]
) -> None:
    """Each entry opens a region that the next one closes with PATCH. Flag changes stay off
    the dashboards in the dark room; reveal mode marks them, the earlier ones at their times."""
    url, calls, _ = grafana
    control.prepare(config, traffic=False, now=T0)
    files = ProgramFiles.of(config.state_dir)
    annotator = Annotator(files.annotations, journal_note(config), url)
    runner = new_runner(config, annotator=annotator)
    runner.tick(at_program(1, "0:01"))
    runner.tick(at_program(1, "0:16"))
    dark_room = events(config, "flag_changed")
    flags = {e.fields["flag"] for e in dark_room}
    assert flags, "the dark room turned triggers on"
    runner.tick(at_program(1, "2:31"))  # the post-mortem: reveal mode on
    runner.rollback("stopped")
    posts = [body for method, _, body in calls if method == "POST"]
    patches = [(path, body) for method, path, body in calls if method == "PATCH"]
    regions = [p["text"] for p in posts if "phase" in p["tags"]]
    points = [p["text"] for p in posts if "flag" in p["tags"]]
    assert regions[:2] == ["phase: welcome and setup", "phase: 1: dark room investigation"]
    # Reveal marks the dark room's changes at their own times, then itself.
    for flag in flags:
        assert any(text.startswith(f"{flag} = ") for text in points), (flag, points)
    assert any(text.startswith("lab.reveal = on") for text in points), points
    # Marked once each, by reveal mode at its own time: not also when it happened (the
    # annotator posts from a thread, so the dark room's posts are only counted here).
    before_reveal = [
        p["time"] for p in posts
        if "flag" in p["tags"] and p["time"] < at_program(1, "2:30").timestamp() * 1000
    ]  # fmt: skip
    assert sorted(before_reveal) == sorted(int(e.ts.timestamp() * 1000) for e in dark_room)
    # Each region (one per entry reached) is closed by PATCH, the last one at the stop.
    assert len(patches) == len(regions)
    assert all(body["timeEnd"] > 0 for _, body in patches)
    assert not [e for e in events(config, "note") if "Grafana" in e.fields["text"]]


def test_a_grafana_that_does_not_answer_costs_one_note_per_outage(
    config: native.LabConfig, grafana: tuple[str, Calls, list[bool]]
) -> None:
    """Annotations while Grafana refuses are skipped with one note; back, one more note."""
    url, calls, down = grafana
    files = ProgramFiles.of(config.state_dir)
    annotator = Annotator(files.annotations, journal_note(config), url)
    down[0] = True
    for minute in range(5):
        annotator.point(T0 + timedelta(minutes=minute), f"flag {minute}")
    wait_for(lambda: annotator.skipped == 5, "five skipped annotations")
    down[0] = False
    annotator.point(T0, "flag again")
    annotator.close(T0, timeout=5)
    notes = [e.fields["text"] for e in events(config, "note")]
    assert len([n for n in notes if "did not take an annotation" in n]) == 1, notes
    assert len([n for n in notes if "answers again; 5 annotations skipped" in n]) == 1, notes
    assert [body["text"] for method, _, body in calls if method == "POST"] == ["flag again"]


# -- background traffic: a real Locust against a server of the test's own -------------------


class _Target(QuietHandler):
    hits: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.hits.append(self.path)
        self.reply(200, b"{}")

    do_GET = do_POST = _answer


@pytest.fixture
def load_target() -> Iterator[tuple[str, list[str]]]:
    """A scenario host of the test's own: its URL, and the paths it was asked for."""
    hits: list[str] = []
    with serving(type("T", (_Target,), {"hits": hits})) as url:
        yield url, hits


def test_background_traffic_runs_a_steady_locust_and_stops_within_two_seconds(
    config: native.LabConfig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    load_target: tuple[str, list[str]],
) -> None:
    """A phase's traffic starts headless Locust at a quarter of verify's users against the
    scenario's host; a restarted runner adopts it; stopping ends it within 2 s, and it wrote
    nothing into verify's files."""
    url, hits = load_target
    monkeypatch.setenv("DRILL_LEDGER_URL", url)
    verify_samples = tmp_path / "verify-samples.tsv"
    monkeypatch.setenv("DRILL_SAMPLES", str(verify_samples))
    program, _ = load(config)
    files = ProgramFiles.of(config.state_dir)
    traffic = Traffic(config, program, files.directory)
    try:
        started = traffic.reconcile(frozenset({"fp-drift"}))
        assert [(e.kind, e.fields["users"]) for e in started] == [
            ("traffic_started", background_users(program.scenario("fp-drift").load.users))
        ]
        deadline = time.monotonic() + 30
        while not hits and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hits, "Locust sent nothing to the scenario's host"
        adopted = Traffic(config, program, files.directory, traffic.running)
        assert adopted.reconcile(frozenset({"fp-drift"})) == []
        pid = traffic.running["fp-drift"].pid
        began = time.monotonic()
        stopped = traffic.reconcile(frozenset())
        assert time.monotonic() - began < 2.0
        assert [e.kind for e in stopped] == ["traffic_stopped"]
        assert not processes.alive(pid)
    finally:
        traffic.stop_all()
    assert not verify_samples.exists()
    assert not (config.state_dir / "runs").exists()


# -- the runner as a real process -----------------------------------------------------------


def free_runner_offset() -> int:
    for _ in range(50):
        offset = native.free_port_offset()
        if native.port_free(RUNNER_PORT + offset):
            return offset
    raise AssertionError("no free port for the runner")


def drill_env(config: native.LabConfig, offset: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        DRILL_STATE_DIR=str(config.state_dir),
        DRILL_PORT_OFFSET=str(offset),
        DRILL_GRAFANA_URL=closed_url(),
    )
    return env


DRILL_CLI = [sys.executable, "-m", "drill.cli"]


def start_runner(
    config: native.LabConfig, env: dict[str, str], *args: str, traffic: bool = False
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "drill.cli", "program", "start", "--foreground"]
    log = open(config.state_dir.parent / "runner-test.log", "ab")  # noqa: SIM115
    config.state_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [*command, "--traffic" if traffic else "--no-traffic", "--root", str(REPO_ROOT), *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def end_runner(config: native.LabConfig, process: subprocess.Popen[bytes]) -> None:
    """A test's cleanup: a runner still alive is killed, and what it left on (flags, its
    background Locust) is rolled back, so a failed test leaves no traffic running."""
    if process.poll() is None:
        process.kill()
        process.wait()
        control.rollback_without_runner(config, "stopped (test cleanup)")


def wait_for(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_runner_process_rolls_back_within_two_seconds_of_sigterm(
    config: native.LabConfig, load_target: tuple[str, list[str]]
) -> None:
    """A foreground runner serves /metrics, refuses a second start and runs the dark room's
    background Locust, one per scenario of the phase; on SIGTERM, within 2 s, every program
    flag is off and every Locust is gone, with traffic_stopped and program_stopped journaled."""
    url, hits = load_target
    offset = free_runner_offset()
    env = drill_env(config, offset)
    for service in ("LEDGER", "CHAIN_A", "FEED"):  # whichever scenario the seed makes live
        env[f"DRILL_{service}_URL"] = url
    # At x60 the dark room lasts 45 s of wall time: the stop lands in it, flags on.
    process = start_runner(config, env, "--speed", "60", "--at", "0:14", traffic=True)
    files = ProgramFiles.of(config.state_dir)
    try:
        wait_for(lambda: program_layer(config), "the dark room's triggers")
        metrics = httpx.get(f"http://127.0.0.1:{RUNNER_PORT + offset}/metrics", timeout=5)
        assert "drill_program_phase_info{" in metrics.text
        with pytest.raises(ProgramError, match="already running"):
            control.start(native.LabConfig(REPO_ROOT, config.state_dir, offset))
        wait_for(lambda: hits, "background traffic at the scenario's host", timeout=30)
        wait_for(lambda: len(files.traffic_records()) == 3, "a Locust per scenario")
        locusts = list(files.traffic_records().values())
        assert program_layer(config) and all(processes.alive(lo.pid) for lo in locusts)
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        wait_for(lambda: not program_layer(config), "the program layer to clear", timeout=2)
        wait_for(
            lambda: not any(processes.alive(lo.pid) for lo in locusts), "Locust to stop", timeout=2
        )
        assert time.monotonic() - began < 2.0
        assert process.wait(timeout=5) == 0
    finally:
        end_runner(config, process)
    assert served(config) == {}
    stopped = [e.fields["scenario"] for e in events(config, "traffic_stopped")]
    assert sorted(stopped) == sorted(lo.scenario for lo in locusts)
    assert [e.fields["reason"] for e in events(config, "program_stopped")] == ["stopped (SIGTERM)"]
    notes = [e.fields["text"] for e in events(config, "note")]
    assert len([n for n in notes if "Grafana" in n]) == 1, notes


def test_listen_serves_the_api_on_a_second_address_too(config: native.LabConfig) -> None:
    """`--listen ADDRESS` (compose's Prometheus scrapes the Docker bridge) adds an address to
    loopback; a bad one is refused before anything starts."""
    offset = free_runner_offset()
    env = drill_env(config, offset)
    bad = subprocess.run(
        [*DRILL_CLI, "program", "start", "--listen", "the-bridge", "--root", str(REPO_ROOT)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--listen 'the-bridge' is not an IP address (or `docker`)" in bad.stderr
    assert not ProgramFiles.of(config.state_dir).clock.exists()
    process = start_runner(config, env, "--speed", "60", "--at", "0:14", "--listen", "127.0.0.2")
    files = ProgramFiles.of(config.state_dir)
    port = RUNNER_PORT + offset
    try:
        wait_for(lambda: files.read_run().get("ready"), "the runner's first tick")
        assert files.read_run()["api"] == [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
        for host in ("127.0.0.1", "127.0.0.2"):
            metrics = httpx.get(f"http://{host}:{port}/metrics", timeout=5)
            assert "drill_program_phase_info{" in metrics.text, host
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        end_runner(config, process)
    assert listen_hosts("0.0.0.0") == ["0.0.0.0"]  # loopback included: one bind, no clash
    assert interface_address("lo") == "127.0.0.1"


def test_a_runner_killed_with_sigkill_and_started_again_converges_without_duplicates(
    config: native.LabConfig,
) -> None:
    """kill -9 leaves the flags on; `start` again resumes the run, reaches the clock's phase on
    its first tick, and the journal has each phase change once."""
    offset = free_runner_offset()
    env = drill_env(config, offset)
    process = start_runner(config, env, "--speed", "120", "--at", "0:14")
    try:
        wait_for(lambda: program_layer(config), "the dark room's triggers")
        process.kill()
        process.wait(timeout=5)
        assert program_layer(config), "kill -9 runs no rollback"
        killed_at = len(events(config, "phase_changed"))
        time.sleep(1.0)
        process = start_runner(config, env)
        files = ProgramFiles.of(config.state_dir)
        resumed = process.pid
        wait_for(
            lambda: files.read_run().get("pid") == resumed and files.read_run().get("ready"),
            "the resumed runner's first tick",
        )
        clock = files.read_clock()
        assert clock is not None
        state = wanted(load(config)[0], clock.elapsed(datetime.now(UTC)), 2026)
        assert program_layer(config) == dict(state.flags)
        indexes = phase_indexes(config)
        assert len(indexes) >= killed_at
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes), indexes
        assert len(events(config, "program_started")) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        end_runner(config, process)
    assert program_layer(config) == {}


def test_a_runner_at_speed_600_finishes_the_program_and_rolls_back_by_itself(
    config: native.LabConfig,
) -> None:
    """Started at 2:45 at x600, the runner passes the debrief and wrap-up, finishes, rolls back
    and exits 0; its files go, and the journal ends with program_stopped (finished)."""
    process = start_runner(config, drill_env(config, free_runner_offset()), "--speed", "600",
                           "--at", "2:45")  # fmt: skip
    try:
        assert process.wait(timeout=30) == 0
    finally:
        end_runner(config, process)
    assert phase_indexes(config) == [6, 7, None]
    assert events(config)[-1].kind == "program_stopped"
    assert events(config)[-1].fields["reason"] == "finished"
    assert program_layer(config) == {} and served(config) == {}
    files = ProgramFiles.of(config.state_dir)
    assert not files.clock.exists() and not files.run.exists()


def test_verify_runs_and_the_instructors_flips_are_journaled(
    config: native.LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verify that cannot run is journaled with verdict error; `drill flags set` and `reset`
    are journaled as the instructor's flag changes."""
    from drill.verify import VerifyError, run_verify

    monkeypatch.setenv("DRILL_LEDGER_URL", closed_url())
    with pytest.raises(VerifyError):
        run_verify(config, "fp-drift", seconds=1)
    (verdict,) = events(config, "verify_run")
    assert (verdict.by, verdict.fields["scenario"], verdict.fields["verdict"]) == (
        "verify fp-drift",
        "fp-drift",
        "error",
    )
    env = {"DRILL_STATE_DIR": str(config.state_dir)}
    cli = CliRunner()
    assert cli.invoke(app, ["flags", "set", "feed.heavy_users", "on"], env=env).exit_code == 0
    assert cli.invoke(app, ["flags", "reset"], env=env).exit_code == 0
    flips = [
        (e.by, e.fields["flag"], e.fields["variant"], e.fields["layer"])
        for e in events(config, "flag_changed")
    ]
    assert flips == [
        ("instructor", "feed.heavy_users", "on", "instructor"),
        ("instructor", "feed.heavy_users", "off", "instructor"),
    ]


def test_start_launches_a_detached_runner_that_stop_ends(
    config: native.LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drill program start` returns once its background runner has ticked; status names it;
    `drill program stop` ends it with the rollback done."""
    offset = free_runner_offset()
    monkeypatch.setenv("DRILL_GRAFANA_URL", closed_url())
    lab = native.LabConfig(REPO_ROOT, config.state_dir, offset)
    # In the post-mortem, reveal mode is on: the detached runner (`python -m`) posts flag
    # annotations, a path the foreground runner does not take at module import.
    started = control.start(lab, at="2:35", speed=60, traffic=False)
    files = ProgramFiles.of(config.state_dir)
    try:
        assert started.pid == files.read_run()["pid"] and started.pid != os.getpid()
        assert program_layer(config), "the first tick set the post-mortem's triggers"
        status = CliRunner().invoke(
            app,
            ["program", "status", "--root", str(REPO_ROOT)],
            env={"DRILL_STATE_DIR": str(config.state_dir), "COLUMNS": "200"},
        )
        assert f"runner pid {started.pid}" in status.output and "4: post-mortem" in status.output
        assert "stopped and rolled back" in control.stop(lab)
        assert not processes.alive(started.pid)
    finally:
        if started.pid is not None and processes.alive(started.pid):
            os.kill(started.pid, signal.SIGKILL)
    assert program_layer(config) == {}
    assert events(config)[-1].kind == "program_stopped"
    assert "runner stopped" in files.log.read_text()
    failed = [e.fields["text"] for e in events(config, "note") if "tick failed" in e.fields["text"]]
    assert not failed, failed
