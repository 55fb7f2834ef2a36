"""The program clock: where the workshop is, in program seconds, at a wall-clock moment.

The clock is wall-clock time, not a count of ticks: a laptop that slept or a runner restarted
after `kill -9` reads the same program time as one that never stopped. Every change (pause,
resume, goto, next, a new speed) re-anchors it: program time `at` at wall time `anchor`, running
`speed` times faster than the wall clock unless paused. That is all its state, a small JSON
document the runner keeps next to the journal. Callers pass `now`, so tests never sleep.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class ProgramClock(BaseModel):
    """Program time `at` at wall time `anchor`, advancing at `speed` unless paused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    anchor: AwareDatetime
    at: float = Field(ge=0, description="Program seconds at the anchor")
    speed: float = Field(gt=0, description="Program seconds per wall-clock second")
    paused: bool = False

    @classmethod
    def start(cls, now: datetime, at: float = 0.0, speed: float = 1.0) -> ProgramClock:
        """A running clock that reads `at` (from `start --at`) now."""
        return cls(anchor=now, at=at, speed=speed)

    def elapsed(self, now: datetime) -> float:
        """Program seconds at `now`; a wall clock set back never runs the program backwards."""
        if self.paused:
            return self.at
        return self.at + max(0.0, (now - self.anchor).total_seconds()) * self.speed

    def pause(self, now: datetime) -> ProgramClock:
        return self._moved(now, self.elapsed(now), paused=True)

    def resume(self, now: datetime) -> ProgramClock:
        return self._moved(now, self.elapsed(now), paused=False)

    def goto(self, now: datetime, at: float) -> ProgramClock:
        """Jump to program time `at`; a paused clock stays paused there."""
        if at < 0:
            raise ValueError(f"program time cannot be negative: {at}")
        return self._moved(now, at, paused=self.paused)

    def next(self, now: datetime, boundaries: Iterable[float]) -> ProgramClock:
        """Jump to the first boundary (an entry's start, or the end) after the current time."""
        current = self.elapsed(now)
        later = [b for b in boundaries if b > current]
        if not later:
            raise ValueError("the program has ended: there is no next entry")
        return self.goto(now, min(later))

    def with_speed(self, now: datetime, speed: float) -> ProgramClock:
        """Run `speed` times faster than the wall clock from now on (`--speed 180`)."""
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        return self._moved(now, self.elapsed(now), paused=self.paused, speed=speed)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ProgramClock:
        """The clock a runner saved; a damaged document raises ValueError."""
        return cls.model_validate_json(text)

    def _moved(
        self, now: datetime, at: float, paused: bool, speed: float | None = None
    ) -> ProgramClock:
        speed = self.speed if speed is None else speed
        return ProgramClock(anchor=now, at=at, speed=speed, paused=paused)
