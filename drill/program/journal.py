"""The program's journal: `<state dir>/program/journal.jsonl`, one JSON event per line.

Each event is appended, flushed and fsynced the moment it happens, so a crash loses at most
the line being written (Chaos Toolkit writes its journal at the end, and an interrupted run
loses it). The reader skips a torn or foreign line with a note instead of failing: the
scoreboard, the report and the post-mortem timeline must still read the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The kinds of event, and what each records besides ts, kind and by.
EVENT_KINDS = {
    "program_started": "a new run: clock (its JSON document) and seed",
    "program_stopped": "the run ended: reason (finished or stopped); everything is off",
    "phase_changed": "the current entry: index, entry, type (phase, break or finished)",
    "flag_changed": "flag, variant, percent, and the layer that set it",
    "hint_released": "scenario, hint (its number from 1), text, at (program time)",
    "traffic_started": "scenario whose background traffic began",
    "traffic_stopped": "scenario whose background traffic ended",
    "reveal_changed": "reveal: on or off",
    "message_shown": "key (its place in scenarios.yaml), text, at",
    "verify_run": "scenario, verdict (pass, fail or error) and the result file",
    "team_added": "team: a new team (its token is not journaled)",
    "claim_filed": "claim (its id), team, scenario, text, trace_ids, promql",
    "claim_judged": "claim, team, scenario, verdict (accepted or rejected), note",
    "hint_unlocked": "team, scenario, hint (its number from 1), cost in points",
    "verify_submitted": "team, scenario, run (its id on the scoreboard), verdict, baseline",
    "note": "text: anything else worth a line, such as a runner resuming after a crash",
}
_RESERVED = frozenset({"ts", "kind", "by"})


def journal_path(state_dir: Path) -> Path:
    return state_dir / "program" / "journal.jsonl"


@dataclass(frozen=True)
class Event:
    """One journal line: when (UTC, with offset), what, who or what did it, and the details."""

    ts: datetime
    kind: str
    by: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JournalContents:
    """The events read back, and a note for each line that had to be skipped."""

    events: tuple[Event, ...]
    notes: tuple[str, ...]


class Journal:
    """Appends events to a journal file and reads them back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, kind: str, by: str, now: datetime | None = None, **fields: Any) -> Event:
        """Write one event durably; `now` (aware) defaults to the current UTC time."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
        if not by:
            raise ValueError("an event names who or what caused it (by)")
        if clash := _RESERVED & fields.keys():
            raise ValueError(f"fields may not be named {', '.join(sorted(clash))}")
        ts = now or datetime.now(UTC)
        if ts.tzinfo is None:
            raise ValueError("an event's time carries its UTC offset")
        event = Event(ts.astimezone(UTC), kind, by, dict(fields))
        line = json.dumps({"ts": event.ts.isoformat(), "kind": kind, "by": by, **fields})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            # The runner, the instructor's CLI and verify may write at the same moment.
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0, os.SEEK_END)
            torn = handle.tell() > 0 and _last_byte(handle) != b"\n"
            # End a line torn by a crash, so that it cannot swallow this event.
            handle.write(("\n" if torn else "").encode() + line.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return event

    def read(self) -> JournalContents:
        """Every readable event in order; a missing journal is an empty one."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return JournalContents((), ())
        lines = data.split(b"\n")
        complete = lines[-1] == b""
        events: list[Event] = []
        notes: list[str] = []
        for number, raw in enumerate(lines[:-1] if complete else lines, start=1):
            if not raw.strip():
                continue
            try:
                events.append(_parse(raw))
            except ValueError as exc:
                last = number == len(lines) and not complete
                why = "torn last line (a crash mid-write)" if last else f"unreadable ({exc})"
                notes.append(f"{self.path}:{number}: {why}, skipped")
        return JournalContents(tuple(events), tuple(notes))


def _last_byte(handle: Any) -> bytes:
    handle.seek(-1, os.SEEK_END)
    last: bytes = handle.read(1)
    return last


def _parse(raw: bytes) -> Event:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("not an object")
    ts, kind, by = document.pop("ts", None), document.pop("kind", None), document.pop("by", None)
    if not (isinstance(ts, str) and isinstance(kind, str) and isinstance(by, str)):
        raise ValueError("ts, kind and by are required strings")
    when = datetime.fromisoformat(ts)
    if when.tzinfo is None:
        raise ValueError("ts has no UTC offset")
    return Event(when, kind, by, document)
