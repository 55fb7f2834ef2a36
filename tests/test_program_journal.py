"""The program journal: one durable JSON line per event, read back even after a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from drill.program.journal import EVENT_KINDS, Journal, journal_path

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(journal_path(tmp_path / ".drill"))


def test_the_journal_lives_under_the_state_dir(tmp_path: Path) -> None:
    """The journal is <state dir>/program/journal.jsonl."""
    assert journal_path(tmp_path) == tmp_path / "program" / "journal.jsonl"


def test_each_event_is_one_line_with_time_kind_and_author(journal: Journal) -> None:
    """An event is a JSON line with ts (UTC, with offset), kind, by and its fields."""
    journal.append("phase_changed", "program", now=T0, index=1, entry="dark room")
    paris = timezone(timedelta(hours=1))
    journal.append("flag_changed", "instructor", now=T0.astimezone(paris), flag="a", variant="on")
    lines = journal.path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first == {
        "ts": "2026-11-30T09:00:00+00:00",
        "kind": "phase_changed",
        "by": "program",
        "index": 1,
        "entry": "dark room",
    }
    assert json.loads(lines[1])["ts"] == "2026-11-30T09:00:00+00:00", "stored in UTC"
    events = journal.read().events
    assert [(e.kind, e.by, dict(e.fields)) for e in events] == [
        ("phase_changed", "program", {"index": 1, "entry": "dark room"}),
        ("flag_changed", "instructor", {"flag": "a", "variant": "on"}),
    ]
    assert events[0].ts == T0


def test_a_torn_last_line_is_skipped_with_a_note_and_swallows_nothing(journal: Journal) -> None:
    """A crash mid-write leaves a torn line: the reader skips it, the next append survives."""
    journal.append("program_started", "instructor", now=T0, seed=1)
    journal.append("hint_released", "program", now=T0, scenario="fp-drift", hint=1)
    with journal.path.open("a") as handle:
        handle.write('{"ts": "2026-11-30T09:01:00+00:00", "kind": "note", "te')
    contents = journal.read()
    assert [e.kind for e in contents.events] == ["program_started", "hint_released"]
    assert len(contents.notes) == 1 and "torn last line" in contents.notes[0]
    assert contents.notes[0].startswith(f"{journal.path}:3:")

    journal.append("note", "program", now=T0, text="runner resumed")
    contents = journal.read()
    assert [e.kind for e in contents.events] == ["program_started", "hint_released", "note"]
    assert len(contents.notes) == 1 and "unreadable" in contents.notes[0]


def test_lines_that_are_not_events_are_skipped_with_a_note(journal: Journal) -> None:
    """Foreign or damaged lines in the middle never stop the reader."""
    journal.path.parent.mkdir(parents=True)
    good = json.dumps({"ts": "2026-11-30T09:00:00+00:00", "kind": "note", "by": "x"})
    naive = json.dumps({"ts": "2026-11-30T09:00:00", "kind": "note", "by": "x"})
    journal.path.write_bytes(
        b"\n".join([good.encode(), b"[1, 2]", b"\xff\xfe", naive.encode(), b"", good.encode()])
        + b"\n"
    )
    contents = journal.read()
    assert len(contents.events) == 2
    assert [note.split(":")[1] for note in contents.notes] == ["2", "3", "4"]


def test_a_missing_journal_reads_as_empty(journal: Journal) -> None:
    """Before the first event there is nothing to read, and no error."""
    contents = journal.read()
    assert contents.events == () and contents.notes == ()


@pytest.mark.parametrize(
    ("kind", "by", "now", "fields", "problem"),
    [
        ("phase_change", "program", T0, {}, "unknown event kind"),
        ("note", "", T0, {}, "who or what"),
        ("note", "program", T0, {"ts": "x"}, "may not be named ts"),
        ("note", "program", datetime(2026, 11, 30, 9, 0), {}, "UTC offset"),
    ],
)
def test_malformed_events_are_refused_before_writing(
    journal: Journal, kind: str, by: str, now: datetime, fields: dict[str, str], problem: str
) -> None:
    """Unknown kinds, anonymous events, reserved field names and naive times are refused."""
    with pytest.raises(ValueError, match=problem):
        journal.append(kind, by, now=now, **fields)
    assert not journal.path.exists()


def test_the_event_kinds_are_the_documented_set() -> None:
    """The journal knows exactly the runner's event kinds, each described."""
    assert set(EVENT_KINDS) == {
        "program_started",
        "program_stopped",
        "phase_changed",
        "flag_changed",
        "hint_released",
        "traffic_started",
        "traffic_stopped",
        "reveal_changed",
        "message_shown",
        "verify_run",
        "team_added",
        "claim_filed",
        "claim_judged",
        "hint_unlocked",
        "verify_submitted",
        "note",
    }
    assert all(description.strip() for description in EVENT_KINDS.values())
