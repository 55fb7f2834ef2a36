"""The workshop's teams: tokens, root-cause claims, the hint ladder and verified fixes.

State lives in SQLite, `<state dir>/program/workshop.db`, every change in one transaction
(WAL, so the scoreboard reads while a claim is written). Each change is also appended to the
program's journal (drill.program.journal) once it is stored: the debrief reads the journal.

Tokens are random (`secrets`); only their SHA-256 is stored, and a presented token is compared
with every stored one in constant time (`hmac.compare_digest`), so neither the database nor the
timing gives one away. The instructor's token is also kept in `instructor.token` (mode 0600)
for `drill program token`, and its digest in `instructor.sha256` (0644) for the services' admin
routes (services.kit.admin); a team's token is shown once, when it is made or rotated.

The API (drill.program.team_api) and the instructor's CLI both go through `Workshop`; the
rules a request can break raise `Refused` with the HTTP status that fits.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drill.program.journal import Journal
from drill.scenarios import Program
from services.kit.admin import DIGEST_FILE, token_digest, write_token_digest

INSTRUCTOR = "instructor"
TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_CLAIM_TEXT = 2000
MAX_NOTE = 1000
MAX_PROMQL = 1000
MAX_TRACE_IDS = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('instructor', 'team')),
    team TEXT UNIQUE REFERENCES teams (name),
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS teams (name TEXT PRIMARY KEY, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live (
    scenario TEXT PRIMARY KEY, since TEXT NOT NULL, program_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    id INTEGER PRIMARY KEY,
    team TEXT NOT NULL REFERENCES teams (name),
    scenario TEXT NOT NULL,
    text TEXT NOT NULL,
    trace_ids TEXT NOT NULL,
    promql TEXT,
    evidence TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'rejected')),
    note TEXT,
    filed_at TEXT NOT NULL,
    program_at REAL,
    judged_at TEXT,
    judged_by TEXT
);
CREATE TABLE IF NOT EXISTS hints (
    team TEXT NOT NULL REFERENCES teams (name),
    scenario TEXT NOT NULL,
    number INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (team, scenario, number)
);
CREATE TABLE IF NOT EXISTS verify_runs (
    id INTEGER PRIMARY KEY,
    team TEXT NOT NULL REFERENCES teams (name),
    scenario TEXT NOT NULL,
    passed INTEGER NOT NULL,
    baseline INTEGER NOT NULL,
    started_at TEXT,
    submitted_at TEXT NOT NULL,
    checks TEXT NOT NULL,
    result TEXT NOT NULL
);
"""


class Refused(Exception):
    """A request the workshop's rules refuse; `status` is the HTTP status that says why."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def _now(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Caller:
    """Who presented a token: the instructor, or a team by name."""

    role: str
    team: str | None = None

    @property
    def name(self) -> str:
        return self.team or INSTRUCTOR


@dataclass(frozen=True)
class Claim:
    id: int
    team: str
    scenario: str
    text: str
    trace_ids: tuple[str, ...]
    promql: str | None
    evidence: Mapping[str, Any]
    status: str
    note: str | None
    filed_at: str
    program_at: float | None
    judged_at: str | None
    judged_by: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team": self.team,
            "scenario": self.scenario,
            "text": self.text,
            "trace_ids": list(self.trace_ids),
            "promql": self.promql,
            "evidence": dict(self.evidence),
            "status": self.status,
            "note": self.note,
            "filed_at": self.filed_at,
            "program_at": self.program_at,
            "judged_at": self.judged_at,
        }


def _claim(row: sqlite3.Row) -> Claim:
    return Claim(
        id=row["id"],
        team=row["team"],
        scenario=row["scenario"],
        text=row["text"],
        trace_ids=tuple(json.loads(row["trace_ids"])),
        promql=row["promql"],
        evidence=json.loads(row["evidence"]),
        status=row["status"],
        note=row["note"],
        filed_at=row["filed_at"],
        program_at=row["program_at"],
        judged_at=row["judged_at"],
        judged_by=row["judged_by"],
    )


def finite(value: Any) -> float | None:
    """A figure as JSON can carry it: NaN and infinities (no samples, no bound) become None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def trace_ids_in_logs(log_dir: Path, trace_ids: Sequence[str]) -> dict[str, list[str]]:
    """For each trace id, the services whose log (`<log dir>/<service>.log`) names it."""
    found: dict[str, list[str]] = {trace_id: [] for trace_id in trace_ids}
    if not trace_ids:
        return found
    for log in sorted(log_dir.glob("*.log")) if log_dir.is_dir() else ():
        try:
            data = log.read_bytes()
        except OSError:
            continue
        for trace_id in trace_ids:
            if trace_id.encode() in data:
                found[trace_id].append(log.stem)
    return found


class Workshop:
    """The teams' store. Each method is one transaction; a refused request stores nothing."""

    def __init__(self, directory: Path, program: Program, journal: Journal) -> None:
        self.directory = directory
        self.path = directory / "workshop.db"
        self.program = program
        self.journal = journal
        directory.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=15.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; it takes the write lock at once (BEGIN IMMEDIATE), so two
        teams' requests never both read a hint ladder and both write the same rung."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _scenario(self, name: str) -> None:
        if name not in self.program.scenarios:
            known = ", ".join(sorted(self.program.scenarios))
            raise Refused(404, "Unknown scenario", f"no scenario {name!r}; known: {known}")

    # -- tokens and teams ----------------------------------------------------------------------

    @property
    def instructor_token_file(self) -> Path:
        return self.directory / "instructor.token"

    def instructor_token(self) -> str:
        """The instructor's token, made the first time it is asked for."""
        try:
            token = self.instructor_token_file.read_text().strip()
        except FileNotFoundError:
            token = ""
        with self._write() as db:
            known = (
                token
                and db.execute(
                    "SELECT 1 FROM tokens WHERE digest = ? AND role = 'instructor'",
                    (token_digest(token),),
                ).fetchone()
            )
            if not known:
                token = new_token()
                db.execute("DELETE FROM tokens WHERE role = 'instructor'")
                db.execute(
                    "INSERT INTO tokens (digest, role, team, created) VALUES (?, 'instructor', "
                    "NULL, ?)",
                    (token_digest(token), _now(None)),
                )
                descriptor = os.open(
                    self.instructor_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
                )
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(token + "\n")
        # The services' admin routes check this digest (they cannot read the 0600 file).
        write_token_digest(self.directory / DIGEST_FILE.name, token)
        return token

    def has_tokens(self) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is not None

    def caller(self, token: str | None) -> Caller | None:
        """Who the token belongs to, or None. Compared with every stored digest in constant
        time, whether or not an earlier one matched."""
        if not token:
            return None
        presented = token_digest(token)
        with self._connect() as db:
            rows = db.execute("SELECT digest, role, team FROM tokens").fetchall()
        match: Caller | None = None
        for row in rows:
            if hmac.compare_digest(presented, row["digest"]):
                match = Caller(row["role"], row["team"])
        return match

    def add_teams(self, names: Sequence[str], by: str = INSTRUCTOR) -> dict[str, str]:
        """Create teams; returns each one's token (shown this once)."""
        bad = [name for name in names if not TEAM_NAME.match(name)]
        if bad:
            raise Refused(
                422,
                "Bad team name",
                f"team names are 1-32 letters, digits, - or _, starting with a letter or digit: "
                f"{', '.join(repr(n) for n in bad)}",
            )
        if len(set(names)) != len(names):
            raise Refused(422, "Bad team name", "a team name is given twice")
        tokens = {name: new_token() for name in names}
        now = _now(None)
        with self._write() as db:
            taken = [
                name
                for name in names
                if db.execute("SELECT 1 FROM teams WHERE name = ?", (name,)).fetchone()
            ]
            if taken:
                raise Refused(409, "Team exists", f"already a team: {', '.join(taken)}")
            for name, token in tokens.items():
                db.execute("INSERT INTO teams (name, created) VALUES (?, ?)", (name, now))
                db.execute(
                    "INSERT INTO tokens (digest, role, team, created) VALUES (?, 'team', ?, ?)",
                    (token_digest(token), name, now),
                )
        for name in names:
            self.journal.append("team_added", by, team=name)
        return tokens

    def rotate(self, team: str, by: str = INSTRUCTOR) -> str:
        """A new token for a team; the old one stops working."""
        token = new_token()
        with self._write() as db:
            self._team(db, team)
            db.execute(
                "UPDATE tokens SET digest = ?, created = ? WHERE team = ?",
                (token_digest(token), _now(None), team),
            )
        self.journal.append("note", by, text=f"team {team}: token rotated", team=team)
        return token

    def teams(self) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT name FROM teams ORDER BY rowid").fetchall()
        return [row["name"] for row in rows]

    @staticmethod
    def _team(db: sqlite3.Connection, team: str) -> None:
        if not db.execute("SELECT 1 FROM teams WHERE name = ?", (team,)).fetchone():
            raise Refused(404, "Unknown team", f"no team {team!r}")

    # -- the program's side --------------------------------------------------------------------

    def note_live(self, scenarios: Sequence[str], program_at: float, now: datetime) -> None:
        """Record when each scenario first went live (time to root cause runs from there)."""
        if not scenarios:
            return
        with self._write() as db:
            for name in scenarios:
                db.execute(
                    "INSERT OR IGNORE INTO live (scenario, since, program_at) VALUES (?, ?, ?)",
                    (name, _now(now), program_at),
                )

    def went_live(self) -> dict[str, tuple[str, float]]:
        """Each scenario that has been live: when (UTC) and at which program time (seconds)."""
        with self._connect() as db:
            return {
                row["scenario"]: (row["since"], row["program_at"])
                for row in db.execute("SELECT * FROM live")
            }

    # -- claims --------------------------------------------------------------------------------

    def file_claim(
        self,
        team: str,
        scenario: str,
        text: str,
        trace_ids: Sequence[str],
        promql: str | None,
        live: Sequence[str],
        evidence: Mapping[str, Any],
        program_at: float | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """A team's root-cause claim on a live scenario, with its evidence checked."""
        self._scenario(scenario)
        text = text.strip()
        if not text:
            raise Refused(422, "Empty claim", "a claim says what the root cause is (text)")
        if scenario not in live:
            raise Refused(
                409, "Scenario not live", f"{scenario} is not live now; claims are on live ones"
            )
        with self._write() as db:
            self._team(db, team)
            accepted = db.execute(
                "SELECT id FROM claims WHERE team = ? AND scenario = ? AND status = 'accepted'",
                (team, scenario),
            ).fetchone()
            if accepted:
                raise Refused(
                    409,
                    "Root cause already found",
                    f"claim {accepted['id']} on {scenario} is already accepted",
                )
            cursor = db.execute(
                "INSERT INTO claims (team, scenario, text, trace_ids, promql, evidence, filed_at, "
                "program_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    team,
                    scenario,
                    text,
                    json.dumps(list(trace_ids)),
                    promql,
                    json.dumps(dict(evidence)),
                    _now(now),
                    program_at,
                ),
            )
            row = db.execute("SELECT * FROM claims WHERE id = ?", (cursor.lastrowid,)).fetchone()
        claim = _claim(row)
        self.journal.append(
            "claim_filed", team, now, claim=claim.id, team=team, scenario=scenario, text=text,
            trace_ids=list(trace_ids), promql=promql,
        )  # fmt: skip
        return claim

    def claims(self, team: str | None = None) -> list[Claim]:
        with self._connect() as db:
            if team is None:
                rows = db.execute("SELECT * FROM claims ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM claims WHERE team = ? ORDER BY id", (team,)
                ).fetchall()
        return [_claim(row) for row in rows]

    def judge(
        self,
        claim_id: int,
        verdict: str,
        note: str,
        by: str = INSTRUCTOR,
        now: datetime | None = None,
    ) -> Claim:
        """Accept or reject a pending claim (a judged one stays as judged)."""
        if verdict not in ("accept", "reject"):
            raise Refused(422, "Bad verdict", f"a verdict is accept or reject, not {verdict!r}")
        if len(note) > MAX_NOTE:
            raise Refused(422, "Note too long", f"a note is at most {MAX_NOTE} characters")
        status = "accepted" if verdict == "accept" else "rejected"
        with self._write() as db:
            row = db.execute("SELECT * FROM claims WHERE id = ?", (claim_id,)).fetchone()
            if row is None:
                raise Refused(404, "Unknown claim", f"no claim {claim_id}")
            if row["status"] != "pending":
                raise Refused(
                    409, "Claim already judged", f"claim {claim_id} is already {row['status']}"
                )
            if status == "accepted":
                other = db.execute(
                    "SELECT id FROM claims WHERE team = ? AND scenario = ? AND status = 'accepted'",
                    (row["team"], row["scenario"]),
                ).fetchone()
                if other:
                    raise Refused(
                        409,
                        "Root cause already found",
                        f"claim {other['id']} of {row['team']} on {row['scenario']} is accepted",
                    )
            db.execute(
                "UPDATE claims SET status = ?, note = ?, judged_at = ?, judged_by = ? WHERE id = ?",
                (status, note, _now(now), by, claim_id),
            )
            row = db.execute("SELECT * FROM claims WHERE id = ?", (claim_id,)).fetchone()
        claim = _claim(row)
        self.journal.append(
            "claim_judged", by, now, claim=claim.id, team=claim.team, scenario=claim.scenario,
            verdict=status, note=note,
        )  # fmt: skip
        return claim

    # -- the hint ladder -----------------------------------------------------------------------

    def unlock_hint(
        self, team: str, scenario: str, released: Sequence[int], now: datetime | None = None
    ) -> dict[str, Any]:
        """The team's next hint on a scenario: hint N only after N-1. Hints the program has
        released to the room (`released`) count as unlocked and cost nothing."""
        self._scenario(scenario)
        hints = self.program.scenarios[scenario].hints
        with self._write() as db:
            self._team(db, team)
            bought = {
                row["number"]
                for row in db.execute(
                    "SELECT number FROM hints WHERE team = ? AND scenario = ?", (team, scenario)
                )
            }
            have = bought | set(released)
            number = 1
            while number in have:
                number += 1
            if number > len(hints):
                raise Refused(
                    409, "No more hints", f"{scenario} has {len(hints)} hints; all are open"
                )
            cost = self.program.scoring.hint_cost(number)
            db.execute(
                "INSERT INTO hints (team, scenario, number, cost, at) VALUES (?, ?, ?, ?, ?)",
                (team, scenario, number, cost, _now(now)),
            )
        self.journal.append(
            "hint_unlocked", team, now, team=team, scenario=scenario, hint=number, cost=cost
        )
        return {"scenario": scenario, "hint": number, "text": hints[number - 1], "cost": cost}

    def open_hints(self, team: str, scenario: str, released: Sequence[int]) -> dict[str, Any]:
        """The hints the team can read on a scenario, and what the next one costs."""
        self._scenario(scenario)
        hints = self.program.scenarios[scenario].hints
        with self._connect() as db:
            self._team(db, team)
            rows = db.execute(
                "SELECT number, cost FROM hints WHERE team = ? AND scenario = ?", (team, scenario)
            ).fetchall()
        cost = {row["number"]: row["cost"] for row in rows}
        numbers = sorted(set(cost) | {n for n in released if 1 <= n <= len(hints)})
        following = 1
        while following in numbers:
            following += 1
        return {
            "scenario": scenario,
            "hints": [{"hint": n, "text": hints[n - 1], "cost": cost.get(n, 0)} for n in numbers],
            "next": None
            if following > len(hints)
            else {"hint": following, "cost": self.program.scoring.hint_cost(following)},
        }

    # -- solution notes ------------------------------------------------------------------------

    def has_root_cause(self, team: str, scenario: str) -> bool:
        with self._connect() as db:
            return (
                db.execute(
                    "SELECT 1 FROM claims WHERE team = ? AND scenario = ? AND status = 'accepted'",
                    (team, scenario),
                ).fetchone()
                is not None
            )

    # -- verified fixes ------------------------------------------------------------------------

    def submit_verify(
        self, team: str, result: Mapping[str, Any], now: datetime | None = None
    ) -> int:
        """Keep a team's `drill verify` result (every run is kept; the board shows the best)."""
        scenario = str(result["scenario"])
        self._scenario(scenario)
        checks = [
            {
                "name": str(check.get("name", "")),
                "figure": str(check.get("figure", "")),
                "kind": str(check.get("kind", "")),
                "value": finite(check.get("value")),
                "passed": bool(check.get("passed")),
            }
            for check in result.get("checks", [])
        ]
        passed = bool(result["passed"])
        with self._write() as db:
            self._team(db, team)
            cursor = db.execute(
                "INSERT INTO verify_runs (team, scenario, passed, baseline, started_at, "
                "submitted_at, checks, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    team,
                    scenario,
                    int(passed),
                    int(bool(result.get("baseline"))),
                    result.get("started_at"),
                    _now(now),
                    json.dumps(checks),
                    json.dumps(result, default=str),
                ),
            )
            run_id = int(cursor.lastrowid or 0)
        self.journal.append(
            "verify_submitted", team, now, team=team, scenario=scenario, run=run_id,
            verdict="pass" if passed else "fail", baseline=bool(result.get("baseline")),
        )  # fmt: skip
        return run_id

    def verify_runs(self, team: str | None = None) -> list[dict[str, Any]]:
        with self._connect() as db:
            query = "SELECT id, team, scenario, passed, baseline, started_at, submitted_at, checks"
            if team is None:
                rows = db.execute(query + " FROM verify_runs ORDER BY id").fetchall()
            else:
                rows = db.execute(
                    query + " FROM verify_runs WHERE team = ? ORDER BY id", (team,)
                ).fetchall()
        return [
            {
                "id": row["id"],
                "team": row["team"],
                "scenario": row["scenario"],
                "passed": bool(row["passed"]),
                "baseline": bool(row["baseline"]),
                "started_at": row["started_at"],
                "submitted_at": row["submitted_at"],
                "checks": json.loads(row["checks"]),
            }
            for row in rows
        ]

    def hints_taken(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM hints ORDER BY at, team, scenario, number").fetchall()
        return [dict(row) for row in rows]
