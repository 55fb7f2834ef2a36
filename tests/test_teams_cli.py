"""The teams through the real CLI and a real runner process: the instructor's commands on the
runner's machine, a team's `drill claim`, `drill hint` and `drill notes` over HTTP."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from drill import native
from drill.program.api import RUNNER_PORT
from drill.program.plan import wanted
from drill.program.runner import ProgramFiles
from drill.scenarios import load_program
from tests.conftest import REPO_ROOT
from tests.servers import closed_url
from tests.test_program_runner import (
    DRILL_CLI,
    drill_env,
    end_runner,
    free_runner_offset,
    start_runner,
    wait_for,
)

PROGRAM = load_program(REPO_ROOT / "scenarios.yaml")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def config(tmp_path: Path) -> native.LabConfig:
    return native.LabConfig(REPO_ROOT, tmp_path / "state")


def drill(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRILL_CLI, *args, "--root", str(REPO_ROOT)],
        env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_teams_add_list_rotate_and_bad_names(config: native.LabConfig) -> None:
    env = drill_env(config, free_runner_offset())
    added = drill(env, "program", "teams", "add", "red", "blue")
    assert added.returncode == 0, added.stderr
    assert "red" in added.stdout and "blue" in added.stdout
    assert drill(env, "program", "teams", "list").stdout.split() == ["red", "blue"]
    for bad, says in (
        (["red"], "already a team: red"),
        (["no spaces"], "team names are 1-32 letters"),
        (["x" * 33], "team names are 1-32 letters"),
    ):
        refused = drill(env, "program", "teams", "add", *bad)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    assert drill(env, "program", "teams", "list").stdout.split() == ["red", "blue"]
    rotated = drill(env, "program", "teams", "rotate", "red")
    assert rotated.returncode == 0 and rotated.stdout.startswith("red: ")
    unknown = drill(env, "program", "teams", "rotate", "purple")
    assert unknown.returncode == 2 and "no team 'purple'" in unknown.stderr
    token = drill(env, "program", "token").stdout.strip()
    assert token == drill(env, "program", "token").stdout.strip() and len(token) >= 32
    judged = drill(env, "program", "judge", "7", "accept")
    assert judged.returncode == 2 and "no claim 7" in judged.stderr


def test_listening_beyond_loopback_needs_tokens(config: native.LabConfig) -> None:
    env = drill_env(config, free_runner_offset())
    refused = drill(env, "program", "start", "--listen", "0.0.0.0", "--no-traffic")
    assert refused.returncode == 2
    assert "its writes need tokens" in refused.stderr and "teams add" in refused.stderr
    assert not ProgramFiles.of(config.state_dir).clock.exists()


def test_a_team_claims_takes_a_hint_and_reads_the_notes(config: native.LabConfig) -> None:
    """A real runner in the dark room; the team's CLI talks to it over HTTP."""
    offset = free_runner_offset()
    env = drill_env(config, offset)
    tokens = drill(env, "program", "teams", "add", "red")
    token = next(line.split()[-2] for line in tokens.stdout.splitlines() if " red " in line)
    live = wanted(PROGRAM, 16 * 60, 2026).live
    assert len(live) == 1
    scenario = live[0]
    process = start_runner(
        config, env, "--at", "0:16", "--seed", "2026", "--listen", "0.0.0.0", "--no-annotations"
    )
    try:
        wait_for(lambda: ProgramFiles.of(config.state_dir).read_run().get("ready"), "first tick")
        team = {**env, "DRILL_TEAM_TOKEN": token}
        no_token = drill(env, "claim", scenario, "a guess")
        assert no_token.returncode == 2 and "DRILL_TEAM_TOKEN is not set" in no_token.stderr
        bad_trace = drill(team, "claim", scenario, "a guess", "--trace-id", "xyz")
        assert bad_trace.returncode == 2 and "32 hex digits" in bad_trace.stderr
        filed = drill(team, "claim", scenario, "the root cause", "--trace-id", TRACE)
        assert filed.returncode == 0, filed.stderr
        assert "NOT found in this lab's logs" in filed.stdout and "claim 1 filed" in filed.stdout
        closed = drill(team, "notes", scenario)
        assert closed.returncode == 2 and "once your claim is accepted" in closed.stderr
        listed = drill(env, "program", "claims")
        assert "the root cause" in listed.stdout and "pending" in listed.stdout
        assert drill(env, "program", "judge", "1", "accept", "well found").returncode == 0
        notes = drill(team, "notes", scenario)
        assert notes.returncode == 0 and f"# {scenario}: solution notes" in notes.stdout
        hint = drill(team, "hint", scenario)
        first = PROGRAM.scenarios[scenario].hints[0]
        assert hint.returncode == 0 and first in " ".join(hint.stdout.split())
        shown = drill(team, "hint", scenario, "--show")
        assert "next: hint 2" in shown.stdout
        board = httpx.get(f"http://127.0.0.1:{RUNNER_PORT + offset}/scoreboard", timeout=5).json()
        assert board["revealed"] is False
        assert board["teams"][0]["root_causes"] == 1 and board["teams"][0]["hints_used"] == 1
        table = drill(env, "program", "scoreboard")
        assert scenario in table.stdout and "red" in table.stdout
        # No runner at the URL: the lab's own hints, one rung at a time, said to be unscored.
        away = drill({**team, "DRILL_SCOREBOARD_URL": closed_url()}, "hint", scenario)
        assert away.returncode == 0 and "not scored" in away.stderr
        assert "hint 1" in away.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        end_runner(config, process)
    lines = ProgramFiles.of(config.state_dir).journal.read_text().splitlines()
    for kind in ("team_added", "claim_filed", "claim_judged", "hint_unlocked"):
        assert sum(f'"kind": "{kind}"' in line for line in lines) == 1, kind


def test_a_teams_runner_joins_the_instructors_program_by_wall_clock(
    config: native.LabConfig,
) -> None:
    """`--started-at 09:15`: a runner started later lands where the instructor's program is."""
    from datetime import UTC, datetime, timedelta

    from drill.program import control
    from drill.program.runner import ProgramError

    now = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
    started = control.prepare(config, started_at=now - timedelta(minutes=50), now=now)
    assert started.at == 50 * 60
    clock = ProgramFiles.of(config.state_dir).read_clock()
    assert clock is not None and clock.elapsed(now + timedelta(minutes=1)) == 51 * 60
    control.rollback_without_runner(config, "stopped (test)")
    for options, says in (
        ({"started_at": now + timedelta(minutes=1)}, "is in the future"),
        ({"started_at": now - timedelta(hours=4)}, "past the program's end"),
        ({"started_at": now, "at": "0:10"}, "not both"),
    ):
        with pytest.raises(ProgramError, match=says):
            control.prepare(config, now=now, **options)  # type: ignore[arg-type]
        assert not ProgramFiles.of(config.state_dir).clock.exists()
    env = drill_env(config, free_runner_offset())
    bad = drill(env, "program", "start", "--started-at", "25:99")
    assert bad.returncode == 2 and "--started-at '25:99'" in bad.stderr
