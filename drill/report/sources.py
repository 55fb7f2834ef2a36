"""The report's local sources: the journal, the verify runs, the run files and the teams' store.

Each reader returns what it found and a note for what it could not read; none raises on bad
or missing input, so a report is written whatever the state directory holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drill.program.journal import Event, Journal, journal_path
from drill.report.model import Restart, VerifyRun, Window, from_epoch
from drill.scenarios import parse_duration

# The services each drill's fix is deployed to, when scenarios.yaml cannot be read.
SCENARIO_SERVICES = {
    "fp-drift": ("ledger",),
    "circular-deadlock": ("chain-a", "chain-b", "chain-c"),
    "n-plus-one": ("feed", "profiles"),
}
# verify writes result.json after collecting; before that, the load ran load_seconds from here.
_SETTLE_S = 1.0


def parse_since(text: str) -> float:
    """Seconds from a span such as 3h, 90m, 1h30m or 45s, read as durations are everywhere
    (drill.scenarios.parse_duration), except that a unit is required: `--since 3` is too
    likely meant as hours to read as seconds."""
    compact = text.strip().lower()
    if not compact or compact[-1].isdigit():
        raise ValueError(f"expected a span such as 3h, 90m or 1h30m, not {text!r}")
    try:
        return parse_duration(compact)
    except ValueError:
        raise ValueError(f"expected a span such as 3h, 90m or 1h30m, not {text!r}") from None


def read_journal(state_dir: Path) -> tuple[bool, tuple[Event, ...], tuple[str, ...]]:
    """(whether the journal exists, every readable event, a note per skipped line)."""
    path = journal_path(state_dir)
    contents = Journal(path).read()
    return path.exists(), contents.events, contents.notes


def _aware(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_runs(
    state_dir: Path, window: Window, events: tuple[Event, ...]
) -> tuple[tuple[VerifyRun, ...], tuple[str, ...]]:
    """The verify runs under `<state>/runs/*/result.json` that overlap the window, oldest first.

    A run ends at its journal line (verify journals each run with its result file) or, without
    one, when its load did.
    """
    ended: dict[str, datetime] = {}
    for event in events:
        result = event.fields.get("result")
        if event.kind == "verify_run" and isinstance(result, str):
            ended[Path(result).parent.name] = event.ts
    runs: list[VerifyRun] = []
    notes: list[str] = []
    for path in sorted((state_dir / "runs").glob("*/result.json")):
        try:
            document = json.loads(path.read_text())
            started = _aware(str(document["started_at"]))
            load_seconds = float(document.get("load_seconds") or 0.0)
            figures = {str(k): _float(v) for k, v in (document.get("figures") or {}).items()}
            run = VerifyRun(
                id=path.parent.name,
                scenario=str(document["scenario"]),
                baseline=bool(document.get("baseline")),
                passed=bool(document["passed"]),
                started=started,
                load_started=_load_started(path.parent, started),
                finished=started,
                load_seconds=load_seconds,
                warmup_seconds=float(document.get("warmup_seconds") or 0.0),
                figures=figures,
                checks=tuple(c for c in document.get("checks") or [] if isinstance(c, dict)),
                directory=path.parent,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"{path}: unreadable ({type(exc).__name__}: {exc}), skipped")
            continue
        finished = ended.get(run.id) or from_epoch(run.load_started + run.load_seconds)
        run = replace(run, finished=max(finished, started))
        if run.finished >= window.start and run.started <= window.end:
            runs.append(run)
    runs.sort(key=lambda r: r.started)
    return tuple(runs), tuple(notes)


def _load_started(directory: Path, started: datetime) -> float:
    try:
        return float((directory / "locust-started").read_text())
    except (OSError, ValueError):
        return started.timestamp() + _SETTLE_S


def read_run_files(state_dir: Path) -> tuple[Restart, ...]:
    """When each native service's current process started (`<state>/run/<service>.json`)."""
    found = []
    for path in sorted((state_dir / "run").glob("*.json")):
        try:
            document = json.loads(path.read_text())
            found.append(Restart(path.stem, _aware(str(document["started_at"])), "run file"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return tuple(found)


def read_program(root: Path) -> tuple[dict[str, tuple[str, ...]], float, Any, str | None]:
    """(services per scenario, the dark room's minutes, the program or None, a problem)."""
    from drill.scenarios import ScenarioFileError, load_program

    try:
        program = load_program(root / "scenarios.yaml")
    except (ScenarioFileError, OSError) as exc:
        return dict(SCENARIO_SERVICES), 40.0, None, f"scenarios.yaml unreadable: {exc}"
    services = {name: tuple(s.services) for name, s in program.scenarios.items()}
    return services, float(program.scoring.dark_room_minutes), program, None


def read_board(state_dir: Path, program: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The scoreboard (drill.program.scoreboard.board) when workshop.db exists, or why not."""
    database = state_dir / "program" / "workshop.db"
    if not database.exists():
        return None, f"no teams' store at {database} (no workshop ran on this machine)"
    if program is None:
        return None, "the teams' store is there, but scenarios.yaml could not be read"
    import sqlite3

    from drill.program.scoreboard import board
    from drill.program.teams import Workshop

    try:
        workshop = Workshop(database.parent, program, Journal(journal_path(state_dir)))
        return board(workshop), None
    except sqlite3.Error as exc:
        return None, f"{database}: unreadable ({exc})"
