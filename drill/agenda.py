"""The agenda in scenarios.yaml: phases and breaks on the workshop's clock, their actions, and
the rotation that picks the live scenarios and schedules decoys.

The models check one entry at a time; `agenda_problems` checks what needs the whole file (order,
overlap, total, the catalog, the scenarios' hints) and names each problem's place, so that
drill/scenarios.py can report it as file:line: dotted.path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from faults import Catalog, decoy_flag

if TYPE_CHECKING:
    from drill.scenarios import Program

# Debrief mode is this one flag (faults/flags.json); actions switch it with `reveal:`.
REVEAL_FLAG = "lab.reveal"
# Generic faults a decoy can be: each is the catalog flag `generic.<kind>` (faults.decoy_flag,
# catalog kind "decoy"), applied by services/kit/decoys.py.
DecoyKind = Literal["latency", "error_rate", "cpu_burn", "memory_growth", "log_flood"]
DECOY_KINDS: tuple[str, ...] = get_args(DecoyKind)

Location = tuple[int | str, ...]
Problem = tuple[Location, str]  # a place in scenarios.yaml and what is wrong there

_CLOCK = re.compile(r"^(\d+):(\d\d)$")


def parse_clock(value: Any) -> int:
    """Seconds from a workshop time "H:MM" such as "1:10"; "0:99" is refused, not carried."""
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f'expected a time as H:MM in quotes, such as "1:10", got {value!r}')
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes >= 60:
        raise ValueError(f"{value!r} is not a time: minutes run from 00 to 59")
    return hours * 3600 + minutes * 60


def format_clock(seconds: float) -> str:
    """Program seconds as H:MM ("1:10" for 4200), with :SS only when they are not whole minutes."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if secs else f"{hours}:{minutes:02d}"


def _switch(value: Any) -> Any:
    # YAML 1.1 reads a bare on/off as a boolean; take it as the switch it was meant to be.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


ClockTime = Annotated[int, BeforeValidator(parse_clock)]
Switch = Annotated[Literal["off", "on"], BeforeValidator(_switch)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Action(_Strict):
    """One thing a phase does at an offset into it; exactly one of the optional fields."""

    at: ClockTime = Field(description="Offset into the phase, H:MM")
    flag: str | None = None
    variant: str | None = None
    percent: float | None = Field(None, gt=0, le=100)
    traffic: Switch | None = Field(None, description="Start or stop the background traffic")
    hint: int | None = Field(None, ge=1, description="The live scenarios' hint number, from 1")
    reveal: Switch | None = None
    message: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_thing(self) -> Action:
        things = [
            name
            for name in ("flag", "traffic", "hint", "reveal", "message")
            if getattr(self, name) is not None
        ]
        if len(things) != 1:
            raise ValueError(
                "an action does one thing: flag (with variant), traffic, hint, reveal or message"
            )
        if (self.flag is None) != (self.variant is None):
            raise ValueError("a flag action names both flag and variant")
        if self.percent is not None and self.flag is None:
            raise ValueError("percent goes with a flag action")
        return self


class Phase(_Strict):
    """A stretch of the workshop in which the lab does something."""

    name: str = Field(alias="phase", min_length=1)
    start: ClockTime
    end: ClockTime
    scenarios: list[str] = []
    triggers: Switch = "off"
    traffic: Switch = Field("off", description="Background traffic for each of its scenarios")
    checkpoint: str | None = Field(None, description="What a team should answer by the end")
    actions: list[Action] = []


class Break(_Strict):
    """A pause with no triggers, traffic or actions of its own: teams step away and reflect."""

    name: str = Field(alias="break", min_length=1)
    start: ClockTime
    end: ClockTime
    questions: list[str] = []


def _entry_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "phase" if "phase" in value else "break" if "break" in value else None
    return None


Entry = Annotated[
    Annotated[Phase, Tag("phase")] | Annotated[Break, Tag("break")],
    Discriminator(
        _entry_kind,
        custom_error_type="agenda_entry",
        custom_error_message="an agenda entry is a phase (phase: name) or a break (break: name)",
    ),
]
# pydantic names the member in an error's location; scenarios.py drops it (this position).
ENTRY_TAG_POSITION = 2


class Decoy(_Strict):
    """A red herring: a generic fault on a service that is not the culprit, for a while."""

    kind: DecoyKind
    service: str | None = Field(
        None, description="Default: the run's seed picks a service no live scenario uses"
    )
    route: str | None = Field(None, description='e.g. "/accounts/{id}"; default every route')
    percent: float = Field(100, gt=0, le=100)
    start: ClockTime = Field(description="Program time, H:MM")
    end: ClockTime

    @model_validator(mode="after")
    def _route_needs_service(self) -> Decoy:
        if self.route is not None and self.service is None:
            raise ValueError("a route belongs to a service: give service too")
        return self


class Rotation(_Strict):
    """Which scenarios are live in a run, drawn with the seed, and the run's decoys."""

    seed: int
    live: int = Field(ge=1, description="How many of the agenda's scenarios are live per run")
    decoys: list[Decoy] = []


def agenda_problems(program: Program, catalog: Catalog) -> Iterator[Problem]:
    """Each problem with the agenda, as (place in the file, message), in file order."""
    yield from _timing_problems(program)
    names: set[str] = set()
    for index, entry in enumerate(program.agenda):
        if entry.name in names:
            kind = "phase" if isinstance(entry, Phase) else "break"
            yield ("agenda", index, kind), f"another entry is named {entry.name!r} (goto needs one)"
        names.add(entry.name)
        if isinstance(entry, Phase):
            yield from _phase_problems(program, catalog, index, entry)
    yield from _decoy_problems(program, catalog)


def _timing_problems(program: Program) -> Iterator[Problem]:
    # No gaps: the agenda accounts for every minute, and a pause is an explicit break entry.
    clock = format_clock
    previous: Phase | Break | None = None
    for index, entry in enumerate(program.agenda):
        start: Location = ("agenda", index, "start")
        if entry.end <= entry.start:
            message = f"ends at {clock(entry.end)}, not after its start {clock(entry.start)}"
            yield ("agenda", index, "end"), message
        if previous is None:
            if entry.start != 0:
                yield start, "the first entry starts at 0:00"
        elif entry.start < previous.start:
            earlier = f"agenda[{index - 1}] ({previous.name}) at {clock(previous.start)}"
            yield start, f"out of order: starts at {clock(entry.start)}, before {earlier}"
        elif entry.start < previous.end:
            earlier = f"agenda[{index - 1}] ({previous.name})"
            yield start, f"overlaps {earlier}, which ends at {clock(previous.end)}"
        elif entry.start > previous.end:
            gap = f"{clock(previous.end)} to {clock(entry.start)}"
            yield start, f"a gap from {gap}: make a pause a break entry"
        previous = entry
    if previous is not None and previous.end != program.length:
        message = f"the agenda ends at {clock(previous.end)}, not at the length"
        yield ("length",), f"{message} {clock(program.length)}"


def _phase_problems(
    program: Program, catalog: Catalog, index: int, phase: Phase
) -> Iterator[Problem]:
    here: Location = ("agenda", index)
    for position, name in enumerate(phase.scenarios):
        if name not in program.scenarios:
            known = ", ".join(sorted(program.scenarios))
            yield (*here, "scenarios", position), f"no scenario {name!r}; known: {known}"
    if phase.triggers == "on" and not phase.scenarios:
        yield (*here, "triggers"), "triggers on, but the phase names no scenarios"
    length = phase.end - phase.start
    for number, action in enumerate(phase.actions):
        at: Location = (*here, "actions", number)
        if action.at >= length:
            message = f"{format_clock(action.at)} into a phase that lasts {format_clock(length)}"
            yield (*at, "at"), message
        if action.flag is not None and action.variant is not None:
            yield from _flag_problems(catalog, at, action.flag, action.variant)
        if action.reveal is not None and REVEAL_FLAG not in catalog:
            yield (*at, "reveal"), f"the flag catalog has no {REVEAL_FLAG}"
        if action.hint is not None:
            yield from _hint_problems(program, phase, (*at, "hint"), action.hint)


def _flag_problems(catalog: Catalog, at: Location, flag: str, variant: str) -> Iterator[Problem]:
    if flag == REVEAL_FLAG:
        yield (*at, "flag"), f'switch {REVEAL_FLAG} with reveal: "on" or "off"'
    elif flag not in catalog:
        yield (*at, "flag"), f"unknown flag {flag!r}"
    elif variant not in catalog[flag].variants:
        choices = ", ".join(catalog[flag].variants)
        yield (*at, "variant"), f"{flag} has no variant {variant!r}; choose one of: {choices}"


def _hint_problems(program: Program, phase: Phase, at: Location, hint: int) -> Iterator[Problem]:
    if not phase.scenarios:
        yield at, "a hint needs the phase's scenarios"
    for name in phase.scenarios:
        count = len(program.scenarios[name].hints) if name in program.scenarios else hint
        if hint > count:
            yield at, f"{name} has {count} hints, not {hint}"


# An error_rate decoy answers its share of requests 503: beyond this it takes a service down,
# and the room chases an outage instead of a flaky dependency.
ERROR_RATE_MAX_PERCENT = 50.0


def _decoy_problems(program: Program, catalog: Catalog) -> Iterator[Problem]:
    if program.rotation is None:
        return
    pool = program.agenda_scenarios()
    if program.rotation.live > len(pool):
        message = f"{program.rotation.live} live per run, but the agenda names {len(pool)}"
        yield ("rotation", "live"), f"{message} scenarios"
    services = program.services()
    for index, decoy in enumerate(program.rotation.decoys):
        here: Location = ("rotation", "decoys", index)
        if decoy_flag(decoy.kind) not in catalog:
            yield (*here, "kind"), f"the flag catalog has no {decoy_flag(decoy.kind)}"
        if decoy.service is not None and decoy.service not in services:
            known = ", ".join(sorted(services))
            yield (*here, "service"), f"unknown service {decoy.service!r}; known: {known}"
        if decoy.kind == "error_rate" and decoy.percent > ERROR_RATE_MAX_PERCENT:
            share = f"an error_rate decoy on {decoy.percent:g}% of requests"
            yield (
                (*here, "percent"),
                (
                    f"{share} is an outage, not a red herring: give a percent of at most "
                    f"{ERROR_RATE_MAX_PERCENT:g} (5 to 20 looks like a flaky dependency)"
                ),
            )
        if decoy.end <= decoy.start:
            yield (*here, "end"), f"ends at {format_clock(decoy.end)}, not after its start"
        elif decoy.end > program.length:
            ends = f"ends at {format_clock(decoy.end)}"
            yield (*here, "end"), f"{ends}, after the program ({format_clock(program.length)})"
        # One flag per kind: two decoys of a kind at once would need two targetings of it.
        for other, earlier in enumerate(program.rotation.decoys[:index]):
            if (
                earlier.kind == decoy.kind
                and earlier.start < decoy.end
                and decoy.start < earlier.end
            ):
                yield (
                    (*here, "start"),
                    (
                        f"overlaps rotation.decoys[{other}], another {decoy.kind} decoy; one decoy "
                        "of a kind at a time"
                    ),
                )
