"""A workshop rehearsed: two teams, each with its own native lab, one instructor's runner and
scoreboard, all on this machine with distinct ports (the one-lab-per-laptop layout).

The seed's program runs at --speed 180 (the agenda in a minute; the dark room is 15 s of wall
time). The instructor pauses the clock in the dark room, as on the day when a room needs a
minute: red files a correct claim and the instructor accepts it; blue takes two hints. Then the
program goes to the deep dive, still paused, and both teams run `drill verify --submit` against
their own lab: red's tree has the reference fix applied, blue's is as shipped. The program
resumes and runs to its end; in the wrap-up, the scoreboard shows exactly that.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from drill.lab import processes
from drill.program.api import RUNNER_PORT
from drill.program.plan import wanted
from drill.program.runner import ProgramFiles
from drill.scenarios import load_program
from drill.solutions import copy_lab
from tests.conftest import REPO_ROOT
from tests.labs import drop_database, explain, fresh_database, lab_env, run_drill
from tests.servers import closed_url
from tests.test_program_runner import free_runner_offset

# A verdict with a latency bound (red's fix must pass verify): it runs with the drills' verdicts,
# in a pinned lane, not beside the other lab tests.
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.drill]

SPEED = 180
SEED = 2026
PROGRAM = load_program(REPO_ROOT / "scenarios.yaml")
DARK_ROOM = next(e for e in PROGRAM.agenda if e.name == "1: dark room investigation")
WRAP_UP = PROGRAM.agenda[-1]
VERIFY_S = "25"  # the drill tests' length: enough payments to judge (min 500)


@dataclass
class TeamLab:
    name: str
    root: Path
    env: dict[str, str]


@pytest.fixture
def instructor(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The instructor's runner: its own state dir and port, no lab of its own, no traffic."""
    offset = free_runner_offset()
    env = lab_env(tmp_path / "instructor", database_url=None)
    env.update(
        DRILL_PORT_OFFSET=str(offset),
        DRILL_STATE_DIR=str(tmp_path / "instructor" / ".drill"),
        DRILL_GRAFANA_URL=closed_url(),
        COLUMNS="200",
    )
    yield env
    run_drill(REPO_ROOT, env, "program", "stop")


@contextlib.contextmanager
def team_lab(
    tmp_path: Path, postgres_url: str, name: str, solution: str | None
) -> Iterator[TeamLab]:
    root = copy_lab(REPO_ROOT, tmp_path / name, solution=solution)
    database = f"{postgres_url.rsplit('/', 1)[1]}_{name}"
    env = lab_env(root, database_url=fresh_database(database))
    try:
        up = run_drill(root, env, "up", "--native", "--only", "ledger")
        assert up.returncode == 0, up.stderr + up.stdout
        yield TeamLab(name, root, env)
    finally:
        run_drill(root, env, "down")
        drop_database(database)


def test_two_teams_two_labs_one_scoreboard(
    tmp_path: Path, postgres_url: str, instructor: dict[str, str]
) -> None:
    live = wanted(PROGRAM, DARK_ROOM.start + 60, SEED).live
    assert len(live) == 1
    scenario = live[0]
    assert scenario == "fp-drift", "this test's labs run the ledger: the seed must draw fp-drift"
    added = run_drill(REPO_ROOT, instructor, "program", "teams", "add", "red", "blue")
    assert added.returncode == 0, added.stderr
    tokens = {
        line.split()[1]: line.split()[-2] for line in added.stdout.splitlines() if "│" in line
        and line.split()[1] in ("red", "blue")
    }  # fmt: skip
    url = f"http://127.0.0.1:{RUNNER_PORT + int(instructor['DRILL_PORT_OFFSET'])}"

    with contextlib.ExitStack() as stack:
        red = stack.enter_context(team_lab(tmp_path, postgres_url, "red", solution=scenario))
        blue = stack.enter_context(team_lab(tmp_path, postgres_url, "blue", solution=None))
        for lab in (red, blue):
            lab.env.update(DRILL_SCOREBOARD_URL=url, DRILL_TEAM_TOKEN=tokens[lab.name])

        runner = subprocess.Popen(
            [sys.executable, "-m", "drill.cli", "program", "start", "--foreground",
             "--speed", str(SPEED), "--seed", str(SEED), "--no-traffic", "--no-annotations",
             "--root", str(REPO_ROOT)],
            env=instructor, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(_stop, runner)
        _wait(lambda: _ready(url), "the instructor's runner")

        # The dark room: red claims from its own lab; the instructor accepts; blue buys hints.
        _wait(lambda: _program(url)["elapsed"] > DARK_ROOM.start + 30, "the dark room")
        assert run_drill(REPO_ROOT, instructor, "program", "pause").returncode == 0
        claim = run_drill(red.root, red.env, "claim", scenario, "floats and retried posts")
        assert claim.returncode == 0, claim.stderr
        judged = run_drill(REPO_ROOT, instructor, "program", "judge", "1", "accept", "yes")
        assert judged.returncode == 0, judged.stderr
        for _ in range(2):
            hint = run_drill(blue.root, blue.env, "hint", scenario)
            assert hint.returncode == 0, hint.stderr
        claimed_at = _program(url)["elapsed"]
        assert claimed_at < DARK_ROOM.end, f"the claim came at {claimed_at:.0f} s, too late"
        goto = run_drill(REPO_ROOT, instructor, "program", "goto", "deep dive")
        assert goto.returncode == 0, goto.stderr

        # Both verify their own lab and submit; the runner keeps every run.
        results = {}
        for lab in (red, blue):
            done = run_drill(
                lab.root, lab.env, "verify", scenario, "--duration", VERIFY_S, "--submit",
                "--json", str(lab.root / "result.json"),
            )  # fmt: skip
            assert done.returncode in (0, 1), done.stderr + done.stdout
            assert "submitted to" in done.stdout, done.stderr + done.stdout
            results[lab.name] = done
        red_result = (red.root / "result.json").read_text()
        assert results["red"].returncode == 0, explain(_json(red_result))
        assert results["blue"].returncode == 1

        # The rest of the agenda; in the wrap-up (reveal mode is on) the room's board.
        assert run_drill(REPO_ROOT, instructor, "program", "resume").returncode == 0
        _wait(lambda: _program(url).get("entry") == WRAP_UP.name, "the wrap-up", timeout=90)
        board = httpx.get(f"{url}/scoreboard", timeout=5).json()
        assert board["revealed"] is True
        assert runner.wait(timeout=30) == 0  # the program finished by itself

    teams = {team["team"]: team for team in board["teams"]}
    scoring = PROGRAM.scoring
    red_fp, blue_fp = teams["red"]["scenarios"][scenario], teams["blue"]["scenarios"][scenario]
    assert red_fp["in_dark_room"] is True
    assert red_fp["minutes_to_root_cause"] is not None
    assert red_fp["minutes_to_root_cause"] <= scoring.dark_room_minutes
    assert red_fp["hints_used"] == 0 and red_fp["fix_verified_at"] is not None
    assert red_fp["best_run"]["figures"]["ledger.balance_drift"] == 0
    assert red_fp["verify_runs"] == 1
    assert blue_fp["root_cause_at"] is None and blue_fp["hints_used"] == 2
    assert blue_fp["fix_verified_at"] is None and blue_fp["best_run"] is None
    assert blue_fp["verify_runs"] == 1
    assert teams["red"]["points"] == scoring.root_cause + scoring.dark_room_bonus + (
        scoring.fix_verified
    )
    assert teams["blue"]["points"] == -(scoring.hint_cost(1) + scoring.hint_cost(2))
    assert [team["team"] for team in board["teams"]] == ["red", "blue"]

    # The instructor's journal has every team action, in the order it happened.
    journal = ProgramFiles.of(Path(instructor["DRILL_STATE_DIR"])).journal.read_text()
    order = [kind for kind in _kinds(journal) if kind in TEAM_KINDS]
    assert order == [
        "team_added", "team_added", "claim_filed", "claim_judged", "hint_unlocked",
        "hint_unlocked", "verify_submitted", "verify_submitted",
    ]  # fmt: skip
    stopped = [json.loads(line) for line in journal.splitlines() if "program_stopped" in line]
    assert [event["reason"] for event in stopped] == ["finished"]


TEAM_KINDS = {"team_added", "claim_filed", "claim_judged", "hint_unlocked", "verify_submitted"}


def _kinds(journal: str) -> list[str]:
    return [json.loads(line)["kind"] for line in journal.splitlines() if line.strip()]


def _json(text: str) -> Any:
    return json.loads(text)


def _program(url: str) -> dict[str, Any]:
    """The runner's GET /program (the room's view: no culprit before reveal)."""
    program: dict[str, Any] = httpx.get(f"{url}/program", timeout=5).json()
    return program


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stop(runner: subprocess.Popen[bytes]) -> None:
    processes.end(runner, 10)
