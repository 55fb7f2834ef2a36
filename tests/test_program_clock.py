"""The program clock: wall-clock time, speed, pause, goto, next and --at, without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drill.agenda import parse_clock
from drill.program.clock import ProgramClock
from drill.program.plan import boundaries
from drill.scenarios import load_program
from tests.conftest import REPO_ROOT

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_clock_follows_the_wall_clock() -> None:
    """Started now, the program is as far in as the wall clock has moved."""
    clock = ProgramClock.start(T0)
    assert clock.elapsed(T0) == 0
    assert clock.elapsed(at(900)) == 900


def test_speed_rehearses_the_agenda_faster() -> None:
    """--speed 180 runs the three hours in one minute."""
    clock = ProgramClock.start(T0, speed=180)
    assert clock.elapsed(at(60)) == 3 * 3600
    faster = clock.with_speed(at(10), 360)
    assert faster.elapsed(at(10)) == 1800, "a new speed does not move the program"
    assert faster.elapsed(at(20)) == 1800 + 3600


def test_start_at_begins_part_way_through() -> None:
    """start --at 1:10 reads 1:10 at once."""
    clock = ProgramClock.start(T0, at=parse_clock("1:10"))
    assert clock.elapsed(T0) == 4200
    assert clock.elapsed(at(60)) == 4260


def test_pause_holds_the_program_and_resume_continues_from_there() -> None:
    """Paused time does not count; after resume the program runs on from where it stopped."""
    clock = ProgramClock.start(T0).pause(at(100))
    assert clock.elapsed(at(5000)) == 100
    resumed = clock.resume(at(5000))
    assert resumed.elapsed(at(5010)) == 110
    again = resumed.pause(at(5020)).resume(at(6000))
    assert again.elapsed(at(6005)) == 125


def test_goto_jumps_and_keeps_a_pause() -> None:
    """goto moves the program; a paused clock stays paused at its new time."""
    clock = ProgramClock.start(T0).goto(at(10), 3600)
    assert clock.elapsed(at(70)) == 3660
    paused = clock.pause(at(100)).goto(at(200), 600)
    assert paused.paused and paused.elapsed(at(9000)) == 600
    with pytest.raises(ValueError):
        clock.goto(at(1), -5)


def test_next_jumps_to_the_following_entry_and_then_the_end() -> None:
    """next goes to the next entry's start; from the last entry it goes to the end."""
    program = load_program(REPO_ROOT / "scenarios.yaml")
    marks = boundaries(program)
    clock = ProgramClock.start(T0, at=parse_clock("0:20"))
    assert clock.next(T0, marks).elapsed(T0) == parse_clock("1:00")
    on_a_boundary = ProgramClock.start(T0, at=parse_clock("1:00"))
    assert on_a_boundary.next(T0, marks).elapsed(T0) == parse_clock("1:10")
    last = ProgramClock.start(T0, at=parse_clock("2:55"))
    assert last.next(T0, marks).elapsed(T0) == parse_clock("3:00")
    with pytest.raises(ValueError, match="ended"):
        ProgramClock.start(T0, at=parse_clock("3:00")).next(T0, marks)


def test_the_clock_survives_a_restart_as_json() -> None:
    """A runner killed and started again reads the same program time from the saved clock."""
    clock = ProgramClock.start(T0, at=900, speed=2).pause(at(30)).resume(at(90))
    restored = ProgramClock.from_json(clock.to_json())
    assert restored == clock
    assert restored.elapsed(at(4000)) == clock.elapsed(at(4000)) == 900 + 60 + 2 * 3910


@pytest.mark.parametrize(
    "document",
    [
        "{",
        '{"anchor": "2026-11-30T09:00:00", "at": 0, "speed": 1}',
        '{"anchor": "2026-11-30T09:00:00+00:00", "at": 0, "speed": 0}',
        '{"anchor": "2026-11-30T09:00:00+00:00", "at": -1, "speed": 1}',
    ],
)
def test_a_damaged_clock_document_is_refused(document: str) -> None:
    """Broken JSON, a time without offset, speed 0 or negative time raise ValueError."""
    with pytest.raises(ValueError):
        ProgramClock.from_json(document)


def test_a_wall_clock_set_back_does_not_run_the_program_backwards() -> None:
    """If the wall clock jumps back before the anchor, the program holds its time."""
    clock = ProgramClock.start(T0, at=600)
    assert clock.elapsed(at(-300)) == 600
