"""The workshop's teams on the runner's API: tokens, claims, the hint ladder, verify results and
the scoreboard, against the real app (FastAPI) and a real SQLite store in a temporary dir."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from drill import native
from drill.program.api import RUNNER_PORT, ApiServer, Board, create_app
from drill.program.journal import Journal
from drill.program.team_api import MAX_BODY_BYTES, install
from drill.program.teams import Workshop
from drill.scenarios import Program, load_program
from tests.conftest import REPO_ROOT

PROGRAM = load_program(REPO_ROOT / "scenarios.yaml")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def snapshot(live: list[str], elapsed: float, reveal: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "running": True, "entry": "1: the dark room", "type": "phase", "at": "0:20",
        "elapsed": elapsed, "live": live, "drawn": live, "hints": [], "reveal": reveal, **extra,
    }  # fmt: skip


class Room:
    """One runner's API with its store, and the tokens handed out."""

    def __init__(self, directory: Path, program: Program = PROGRAM) -> None:
        self.directory = directory
        self.board = Board()
        self.journal = Journal(directory / "journal.jsonl")
        self.workshop = Workshop(directory, program, self.journal)
        self.app = create_app(self.board, program.agenda_scenarios())
        (directory / "notes").mkdir(exist_ok=True)
        (directory / "notes" / "fp-drift.md").write_text("# fp-drift: solution notes\n")
        (directory / "logs").mkdir(exist_ok=True)
        install(self.app, self.workshop, directory / "notes", directory / "logs")
        self.client = TestClient(self.app)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.journal.read().events]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return Room(tmp_path)


@pytest.fixture
def tokens(room: Room) -> dict[str, str]:
    made = room.workshop.add_teams(["red", "blue"])
    made["instructor"] = room.workshop.instructor_token()
    return made


def claim(room: Room, token: str, **body: Any) -> httpx.Response:
    document = {"scenario": "fp-drift", "text": "float money", "trace_ids": [TRACE], **body}
    return room.client.post("/claims", json=document, headers=auth(token))


# -- tokens -----------------------------------------------------------------------------------


def test_writes_need_a_token_and_reads_of_the_board_do_not(
    room: Room, tokens: dict[str, str]
) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    missing = room.client.post("/claims", json={"scenario": "fp-drift", "text": "x"})
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "Token required"
    wrong = claim(room, "not-a-token")
    assert wrong.status_code == 401 and wrong.json()["title"] == "Unknown token"
    basic = room.client.post(
        "/claims", json={"scenario": "fp-drift", "text": "x"}, headers={"Authorization": "Basic x"}
    )
    assert basic.status_code == 401
    as_instructor = claim(room, tokens["instructor"])
    assert as_instructor.status_code == 403
    assert room.client.get("/scoreboard").status_code == 200
    assert room.client.get("/scoreboard.html").status_code == 200
    assert room.workshop.claims() == []
    filed = claim(room, tokens["red"]).json()
    judged_by_team = room.client.post(
        f"/claims/{filed['id']}/verdict", json={"verdict": "accept"}, headers=auth(tokens["blue"])
    )
    assert judged_by_team.status_code == 403
    assert room.workshop.claims()[0].status == "pending"


def test_a_rotated_token_replaces_the_old_one(room: Room, tokens: dict[str, str]) -> None:
    new = room.workshop.rotate("red")
    assert room.workshop.caller(tokens["red"]) is None
    assert room.workshop.caller(new) is not None and room.workshop.caller(new).team == "red"  # type: ignore[union-attr]
    assert room.workshop.caller(tokens["blue"]).team == "blue"  # type: ignore[union-attr]


def test_tokens_are_not_stored_in_the_clear(room: Room, tokens: dict[str, str]) -> None:
    data = (room.directory / "workshop.db").read_bytes()
    for token in (tokens["red"], tokens["blue"]):
        assert token.encode() not in data
    assert oct((room.directory / "instructor.token").stat().st_mode & 0o777) == "0o600"


# -- bad input: a clear 4xx, nothing stored ---------------------------------------------------

BAD_CLAIMS = [
    ({"scenario": "no-such"}, 404, "no scenario 'no-such'"),
    ({"scenario": "circular-deadlock"}, 409, "circular-deadlock is not live now"),
    ({"text": "x" * 2001}, 422, "/text"),
    ({"text": ""}, 422, "/text"),
    ({"text": "   "}, 422, "says what the root cause is"),
    ({"trace_ids": ["not-hex"]}, 422, "/trace_ids/0"),
    ({"trace_ids": [TRACE] * 11}, 422, "/trace_ids"),
    ({"promql": "x" * 1001}, 422, "/promql"),
    ({"severity": "high"}, 422, "/severity"),
]


@pytest.mark.parametrize(("change", "status", "says"), BAD_CLAIMS)
def test_a_bad_claim_is_refused_and_nothing_is_stored(
    room: Room, tokens: dict[str, str], change: dict[str, Any], status: int, says: str
) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    answer = claim(room, tokens["red"], **change)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert says in answer.json()["detail"]
    assert room.workshop.claims() == []
    assert "claim_filed" not in room.kinds()
    assert claim(room, tokens["red"]).status_code == 201  # and it keeps serving


def test_an_oversized_body_is_refused_before_it_is_read(room: Room, tokens: dict[str, str]) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    body = json.dumps({"scenario": "fp-drift", "text": "x", "padding": "y" * MAX_BODY_BYTES})
    answer = room.client.post(
        "/claims", content=body, headers={**auth(tokens["red"]), "content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json()["title"] == "Request too large"
    assert room.workshop.claims() == []


def test_no_claim_while_no_program_runs(room: Room, tokens: dict[str, str]) -> None:
    answer = claim(room, tokens["red"])
    assert answer.status_code == 409
    assert room.workshop.claims() == []


def test_judging_twice_or_an_unknown_claim_is_refused(room: Room, tokens: dict[str, str]) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    filed = claim(room, tokens["red"]).json()
    judge = auth(tokens["instructor"])

    def verdict(claim_id: int, body: dict[str, str]) -> httpx.Response:
        return room.client.post(f"/claims/{claim_id}/verdict", json=body, headers=judge)

    assert verdict(99, {"verdict": "accept"}).status_code == 404
    assert verdict(filed["id"], {"verdict": "maybe"}).status_code == 422
    ok = verdict(filed["id"], {"verdict": "accept", "note": "yes"})
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"
    assert verdict(filed["id"], {"verdict": "reject"}).status_code == 409
    assert room.workshop.claims()[0].status == "accepted"
    assert claim(room, tokens["red"]).status_code == 409  # the root cause is found already


# -- claims, evidence and time to root cause ---------------------------------------------------


def test_trace_ids_are_checked_against_the_labs_logs(room: Room, tokens: dict[str, str]) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    line = {"ts": "2026-12-01T09:30:00+00:00", "service": "ledger", "trace_id": TRACE, "msg": "x"}
    (room.directory / "logs" / "ledger.log").write_text(json.dumps(line) + "\n")
    other = "0" * 31 + "1"
    filed = claim(room, tokens["red"], trace_ids=[TRACE.upper(), other]).json()
    assert filed["trace_ids"] == [TRACE, other]
    assert filed["evidence"][TRACE] == {"runner_lab": ["ledger"], "team_lab": [], "found": True}
    assert filed["evidence"][other]["found"] is False
    # On a team's own laptop, `drill claim` looks in that lab's logs and says so.
    remote = claim(room, tokens["blue"], trace_ids=[other], found_locally={other: ["ledger"]})
    assert remote.json()["evidence"][other] == {
        "runner_lab": [], "team_lab": ["ledger"], "found": True,
    }  # fmt: skip


def test_time_to_root_cause_runs_from_going_live_in_program_time(
    room: Room, tokens: dict[str, str]
) -> None:
    room.workshop.note_live(["fp-drift"], program_at=900.0, now=_utc("2026-12-01T09:15:00"))
    room.board.publish(snapshot(["fp-drift"], 900 + 25 * 60))
    red = claim(room, tokens["red"]).json()
    room.board.publish(snapshot(["fp-drift"], 900 + 50 * 60))
    blue = claim(room, tokens["blue"]).json()
    for filed in (red, blue):
        room.workshop.judge(filed["id"], "accept", "")
    board = room.client.get("/scoreboard", headers=auth(tokens["instructor"])).json()
    results = {team["team"]: team for team in board["teams"]}
    assert results["red"]["scenarios"]["fp-drift"]["minutes_to_root_cause"] == 25.0
    assert results["red"]["scenarios"]["fp-drift"]["in_dark_room"] is True
    assert results["blue"]["scenarios"]["fp-drift"]["minutes_to_root_cause"] == 50.0
    assert results["blue"]["scenarios"]["fp-drift"]["in_dark_room"] is False
    scoring = PROGRAM.scoring
    assert results["red"]["points"] == scoring.root_cause + scoring.dark_room_bonus
    assert results["blue"]["points"] == scoring.root_cause
    assert [team["team"] for team in board["teams"]] == ["red", "blue"]
    kinds = room.kinds()
    assert kinds.count("claim_filed") == 2 and kinds.count("claim_judged") == 2


def _utc(text: str) -> Any:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- the hint ladder ---------------------------------------------------------------------------


def test_hints_unlock_one_rung_at_a_time_once_per_team(room: Room, tokens: dict[str, str]) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    hints = PROGRAM.scenarios["fp-drift"].hints
    red = auth(tokens["red"])
    taken = [room.client.post("/hints/fp-drift", headers=red).json() for _ in hints]
    assert [(h["hint"], h["text"], h["cost"]) for h in taken] == [
        (n, text, PROGRAM.scoring.hint_cost(n)) for n, text in enumerate(hints, start=1)
    ]
    done = room.client.post("/hints/fp-drift", headers=red)
    assert done.status_code == 409 and done.json()["title"] == "No more hints"
    # Blue's ladder is its own.
    assert room.client.post("/hints/fp-drift", headers=auth(tokens["blue"])).json()["hint"] == 1
    journaled = [e.fields for e in room.journal.read().events if e.kind == "hint_unlocked"]
    ladder = [(f["team"], f["hint"]) for f in journaled]
    assert ladder == [("red", 1), ("red", 2), ("red", 3), ("blue", 1)]
    opened = room.client.get("/hints/fp-drift", headers=red).json()
    assert [h["hint"] for h in opened["hints"]] == [1, 2, 3] and opened["next"] is None
    board = room.client.get("/scoreboard", headers=auth(tokens["instructor"])).json()
    red_row = next(team for team in board["teams"] if team["team"] == "red")
    assert red_row["hints_used"] == 3
    assert red_row["points"] == -sum(PROGRAM.scoring.hint_cost(n) for n in (1, 2, 3))


def test_a_hint_the_program_released_to_the_room_is_free(
    room: Room, tokens: dict[str, str]
) -> None:
    released = [{"scenario": "fp-drift", "hint": 1, "text": "..."}]
    room.board.publish(snapshot(["fp-drift"], 1200, hints=released))
    taken = room.client.post("/hints/fp-drift", headers=auth(tokens["red"])).json()
    assert taken["hint"] == 2 and taken["cost"] == PROGRAM.scoring.hint_cost(2)
    opened = room.client.get("/hints/fp-drift", headers=auth(tokens["red"])).json()
    assert [(h["hint"], h["cost"]) for h in opened["hints"]] == [(1, 0), (2, taken["cost"])]


def test_hints_on_an_unknown_scenario_are_refused(room: Room, tokens: dict[str, str]) -> None:
    answer = room.client.post("/hints/nope", headers=auth(tokens["red"]))
    assert answer.status_code == 404
    assert "hint_unlocked" not in room.kinds()


def test_solution_notes_open_after_the_accepted_claim(room: Room, tokens: dict[str, str]) -> None:
    room.board.publish(snapshot(["fp-drift"], 1200))
    red = auth(tokens["red"])
    assert room.client.get("/notes/fp-drift", headers=red).status_code == 403
    filed = claim(room, tokens["red"]).json()
    assert room.client.get("/notes/fp-drift", headers=red).status_code == 403
    room.workshop.judge(filed["id"], "accept", "")
    notes = room.client.get("/notes/fp-drift", headers=red)
    assert notes.status_code == 200 and notes.text.startswith("# fp-drift")
    assert room.client.get("/notes/fp-drift", headers=auth(tokens["blue"])).status_code == 403
    assert room.client.get("/notes/fp-drift", headers=auth(tokens["instructor"])).status_code == 200
    assert room.client.get("/notes/fp-drift").status_code == 401


# -- verify results ----------------------------------------------------------------------------


def result(passed: bool, p95: float, drift: float = 0.0, baseline: bool = False) -> dict[str, Any]:
    return {
        "scenario": "fp-drift", "baseline": baseline, "passed": passed,
        "started_at": "2026-12-01T10:30:00+00:00", "load_seconds": 25.0, "users": 40,
        "run_dir": "/tmp/x",
        "checks": [
            {"name": "no drift", "figure": "ledger.balance_drift", "request": None,
             "value": drift, "max": 0.0, "min": None, "passed": drift == 0, "kind": "invariant"},
            {"name": "posting is fast", "figure": "p95_ms", "request": "POST /transactions",
             "value": p95, "max": 400.0, "min": None, "passed": p95 <= 400, "kind": "latency"},
        ],
        "figures": {"ledger.balance_drift": drift, "p95_ms": p95, "unknown": math.nan},
    }  # fmt: skip


def test_every_run_is_kept_and_the_board_shows_the_best_pass(
    room: Room, tokens: dict[str, str]
) -> None:
    red = auth(tokens["red"])
    sent = [
        result(False, 900.0, drift=120.5),
        result(True, 180.0),
        result(True, 140.0),
        result(True, 90.0, baseline=True),
    ]
    for document in sent:
        # As `drill verify --json` writes it: NaN for a figure with no samples.
        body = json.dumps(document, allow_nan=True)
        answer = room.client.post(
            "/verify-runs", content=body, headers={**red, "content-type": "application/json"}
        )
        assert answer.status_code == 201, answer.text
    assert len(room.workshop.verify_runs("red")) == 4
    board = room.client.get("/scoreboard", headers=auth(tokens["instructor"])).json()
    fp = next(t for t in board["teams"] if t["team"] == "red")["scenarios"]["fp-drift"]
    assert fp["verify_runs"] == 4
    assert fp["best_run"]["figures"] == {"ledger.balance_drift": 0.0, "p95_ms": 140.0}
    assert fp["fix_verified_at"] is not None
    assert room.kinds().count("verify_submitted") == 4


def test_a_bad_verify_result_is_refused(room: Room, tokens: dict[str, str]) -> None:
    red = auth(tokens["red"])
    for body in ({"scenario": "fp-drift"}, {**result(True, 1), "scenario": "nope"},
                 {**result(True, 1), "checks": []}):  # fmt: skip
        answer = room.client.post(
            "/verify-runs",
            content=json.dumps(body, allow_nan=True),
            headers={**red, "content-type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, answer.text
    assert room.workshop.verify_runs() == []


# -- what the room sees ------------------------------------------------------------------------


def test_the_board_names_no_scenario_until_reveal(room: Room, tokens: dict[str, str]) -> None:
    room.board.publish(snapshot(["circular-deadlock"], 1200))
    filed = claim(room, tokens["red"], scenario="circular-deadlock").json()
    room.workshop.judge(filed["id"], "accept", "")
    dark = room.client.get("/scoreboard").json()
    assert dark["revealed"] is False and "circular-deadlock" not in json.dumps(dark)
    assert dark["teams"][0]["root_causes"] == 1
    assert "circular-deadlock" not in room.client.get("/scoreboard.html").text
    metrics = room.client.get("/metrics").text
    assert 'drill_team_root_causes{team="red"} 1.0' in metrics
    assert "circular-deadlock" not in "\n".join(
        line for line in metrics.splitlines() if line.startswith("drill_team")
    )
    full = room.client.get("/scoreboard", headers=auth(tokens["instructor"])).json()
    assert "circular-deadlock" in full["teams"][0]["scenarios"]
    room.board.publish(snapshot(["circular-deadlock"], 3000, reveal=True))
    assert "circular-deadlock" in room.client.get("/scoreboard").json()["teams"][0]["scenarios"]
    assert "circular-deadlock" in room.client.get("/scoreboard.html").text
    assert 'drill_team_fix_verified{scenario="circular-deadlock",team="red"} 0.0' in (
        room.client.get("/metrics").text
    )


# -- restart and concurrency -------------------------------------------------------------------


def test_a_restarted_runner_loses_nothing(tmp_path: Path) -> None:
    first = Room(tmp_path)
    tokens = first.workshop.add_teams(["red"])
    first.board.publish(snapshot(["fp-drift"], 1200))
    filed = claim(first, tokens["red"]).json()
    first.client.post("/hints/fp-drift", headers=auth(tokens["red"]))
    before = first.client.get("/scoreboard").json()
    again = Room(tmp_path)
    assert again.workshop.teams() == ["red"]
    assert [c.id for c in again.workshop.claims()] == [filed["id"]]
    assert again.client.get("/scoreboard").json()["teams"] == before["teams"]
    again.board.publish(snapshot(["fp-drift"], 1300))
    assert again.client.post("/hints/fp-drift", headers=auth(tokens["red"])).json()["hint"] == 2


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Room, str]]:
    room = Room(tmp_path)
    server = ApiServer(room.app, RUNNER_PORT + native.free_port_offset())
    server.start()
    try:
        yield room, server.url
    finally:
        server.stop(2.0)


def test_twenty_clients_at_once_lose_nothing(served: tuple[Room, str]) -> None:
    """20 teams file a claim and take two hints each, all at once, over real HTTP."""
    room, url = served
    names = [f"team-{n:02d}" for n in range(20)]
    tokens = room.workshop.add_teams(names)
    room.board.publish(snapshot(["fp-drift"], 1200))
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(names))

    def team(name: str) -> None:
        with httpx.Client(base_url=url, headers=auth(tokens[name]), timeout=30) as client:
            start.wait()
            answers = [
                client.post("/claims", json={"scenario": "fp-drift", "text": f"{name} says"}),
                client.post("/hints/fp-drift"),
                client.post("/hints/fp-drift"),
                client.get("/scoreboard"),
            ]
        with lock:
            statuses.extend(answer.status_code for answer in answers)

    threads = [threading.Thread(target=team, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(set(statuses)) == [200, 201], statuses
    assert len(room.workshop.claims()) == 20
    taken = room.workshop.hints_taken()
    assert sorted((h["team"], h["number"]) for h in taken) == sorted(
        (name, n) for name in names for n in (1, 2)
    )
    kinds = room.kinds()
    assert kinds.count("claim_filed") == 20 and kinds.count("hint_unlocked") == 40
