"""The wanted state: what the lab should be doing at a moment of the program.

`wanted(program, elapsed, seed)` is a pure function of the program, the program clock and the
run's seed. The runner reconciles towards it on every tick, so a runner that was killed, or a
laptop that slept, lands where the clock says without replaying anything: one-off events (hints,
messages) are "released up to now", and `pending_events` tells which of them, and which phase
change, the journal has not recorded yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from drill.agenda import REVEAL_FLAG, Break, Decoy, Phase, format_clock
from drill.program.journal import Event
from drill.program.rotation import draw
from drill.scenarios import Program
from faults import FlagSetting, decoy_flag

_NONE_YET = object()  # no phase_changed journaled in this run


@dataclass(frozen=True)
class ReleasedHint:
    """A scenario's hint, numbered from 1, released at program time `at` (seconds)."""

    scenario: str
    number: int
    text: str
    at: int


@dataclass(frozen=True)
class ShownMessage:
    """A message action; `key` is its place in scenarios.yaml, which makes it unique."""

    key: str
    text: str
    at: int


@dataclass(frozen=True)
class Wanted:
    """The lab as it should be at `elapsed` program seconds. Flags not in `flags` are at their
    catalog default (off); `entry` is None once the program has run its length. `flags` holds
    (variant, percent) for triggers and actions, and (variant, percent, where) for the due
    decoys' generic-fault flags, limited to their service and route."""

    elapsed: float
    index: int | None
    entry: Phase | Break | None
    time_left: float
    next_entry: Phase | Break | None
    drawn: tuple[str, ...]
    live: tuple[str, ...]
    flags: Mapping[str, FlagSetting]
    decoys: tuple[Decoy, ...]
    traffic: frozenset[str]
    hints: tuple[ReleasedHint, ...]
    messages: tuple[ShownMessage, ...]
    questions: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.entry is None

    @property
    def reveal(self) -> bool:
        return REVEAL_FLAG in self.flags


def wanted(program: Program, elapsed: float, seed: int) -> Wanted:
    """The wanted state at `elapsed` program seconds for the run drawn with `seed`."""
    if elapsed < 0:
        raise ValueError(f"program time cannot be negative: {elapsed}")
    rotation = draw(program, seed)
    index = next((i for i, e in enumerate(program.agenda) if e.start <= elapsed < e.end), None)
    hints, messages, reveal = _released(program, elapsed, rotation.live)
    if index is None:
        return Wanted(
            elapsed=elapsed,
            index=None,
            entry=None,
            time_left=0.0,
            next_entry=None,
            drawn=rotation.live,
            live=(),
            flags={},
            decoys=(),
            traffic=frozenset(),
            hints=hints,
            messages=messages,
            questions=(),
        )
    entry = program.agenda[index]
    live: tuple[str, ...] = ()
    flags: dict[str, FlagSetting] = {}
    traffic: frozenset[str] = frozenset()
    questions: tuple[str, ...]
    if isinstance(entry, Phase):
        live = tuple(name for name in rotation.live if name in entry.scenarios)
        flags, traffic_on = _phase_flags(program, entry, elapsed - entry.start, live)
        # Every scenario of the phase gets its normal day, not only the culprit: a dashboard
        # with traffic on one service alone would name the culprit, and a decoy on a service
        # without traffic would show nothing.
        traffic = frozenset(entry.scenarios) if traffic_on else frozenset()
        questions = (entry.checkpoint,) if entry.checkpoint else ()
    else:
        questions = tuple(entry.questions)
    if reveal:
        flags[REVEAL_FLAG] = ("on", None)
    decoys = tuple(d for d in rotation.decoys if d.start <= elapsed < d.end)
    flags.update(decoy_flags(decoys))
    following = index + 1
    return Wanted(
        elapsed=elapsed,
        index=index,
        entry=entry,
        time_left=entry.end - elapsed,
        next_entry=program.agenda[following] if following < len(program.agenda) else None,
        drawn=rotation.live,
        live=live,
        flags=flags,
        decoys=decoys,
        traffic=traffic,
        hints=hints,
        messages=messages,
        questions=questions,
    )


def decoy_flags(decoys: Iterable[Decoy]) -> dict[str, FlagSetting]:
    """Each decoy as its generic-fault flag, on for its share of its service's (route's) requests.

    The agenda refuses two decoys of one kind at once, so no decoy overwrites another here.
    """
    flags: dict[str, FlagSetting] = {}
    for decoy in decoys:
        if decoy.service is None:  # the seed left it nowhere to go (rotation.Draw.problems)
            continue
        where = {"service": decoy.service}
        if decoy.route is not None:
            where["route"] = decoy.route
        percent = decoy.percent if decoy.percent < 100 else None
        flags[decoy_flag(decoy.kind)] = ("on", percent, where)
    return flags


def _phase_flags(
    program: Program, phase: Phase, offset: float, live: tuple[str, ...]
) -> tuple[dict[str, FlagSetting], bool]:
    """The phase's flags and traffic switch `offset` seconds into it: its live scenarios'
    triggers (when on), then its actions so far, in the order the file gives them."""
    flags: dict[str, FlagSetting] = {}
    if phase.triggers == "on":
        for name in live:
            for trigger in program.scenarios[name].triggers:
                flags[trigger.flag] = (trigger.variant, trigger.percent)
    # A flag action on another scenario's trigger waits for a run in which that scenario is live.
    owner = {t.flag: name for name, s in program.scenarios.items() for t in s.triggers}
    traffic_on = phase.traffic == "on"
    for action in phase.actions:
        if action.at > offset:
            continue
        if action.flag is not None and action.variant is not None:
            if action.flag not in owner or owner[action.flag] in live:
                flags[action.flag] = (action.variant, action.percent)
        elif action.traffic is not None:
            traffic_on = action.traffic == "on"
    return flags, traffic_on


def _released(
    program: Program, elapsed: float, drawn: tuple[str, ...]
) -> tuple[tuple[ReleasedHint, ...], tuple[ShownMessage, ...], bool]:
    """Hints and messages released by `elapsed`, and whether the last reveal action so far
    turned reveal mode on: a debrief stays revealed into the phases after it."""
    hints: dict[tuple[str, int], ReleasedHint] = {}
    messages: list[ShownMessage] = []
    reveal = False
    for index, entry in enumerate(program.agenda):
        if not isinstance(entry, Phase):
            continue
        for number, action in enumerate(entry.actions):
            at = entry.start + action.at
            if at > elapsed:
                continue
            if action.hint is not None:
                for name in (s for s in drawn if s in entry.scenarios):
                    text = program.scenarios[name].hints[action.hint - 1]
                    hints.setdefault((name, action.hint), ReleasedHint(name, action.hint, text, at))
            elif action.message is not None:
                key = f"agenda[{index}].actions[{number}]"
                messages.append(ShownMessage(key, action.message, at))
            elif action.reveal is not None:
                reveal = action.reveal == "on"
    ordered = sorted(hints.values(), key=lambda h: (h.at, h.scenario, h.number))
    return tuple(ordered), tuple(messages), reveal


def pending_events(
    program: Program, events: Iterable[Event], state: Wanted
) -> list[tuple[str, dict[str, Any]]]:
    """The (kind, fields) journal lines the wanted state calls for and the run's events lack:
    a phase change when the current entry is not the last one journaled (naming any entries
    passed over), and each released hint and shown message not journaled yet. Append them and
    the answer is empty: nothing is journaled twice, and nothing missed is skipped.

    The run's events are those after the last program_started; a runner resuming after a crash
    continues its run and must not journal program_started again.
    """
    hints_seen: set[tuple[Any, Any]] = set()
    messages_seen: set[Any] = set()
    entry_seen: object = _NONE_YET
    for event in events:
        if event.kind == "program_started":
            hints_seen, messages_seen, entry_seen = set(), set(), _NONE_YET
        elif event.kind == "phase_changed":
            entry_seen = event.fields.get("index")
        elif event.kind == "hint_released":
            hints_seen.add((event.fields.get("scenario"), event.fields.get("hint")))
        elif event.kind == "message_shown":
            messages_seen.add(event.fields.get("key"))
    pending: list[tuple[str, dict[str, Any]]] = []
    if entry_seen != state.index:
        fields = _entry_fields(state)
        if isinstance(entry_seen, int):
            # Entries a stopped runner or a sleeping laptop went past are named, never lost.
            until = len(program.agenda) if state.index is None else state.index
            if passed := [entry.name for entry in program.agenda[entry_seen + 1 : until]]:
                fields["passed"] = passed
        pending.append(("phase_changed", fields))
    for hint in state.hints:
        if (hint.scenario, hint.number) not in hints_seen:
            fields = {"scenario": hint.scenario, "hint": hint.number, "text": hint.text}
            pending.append(("hint_released", {**fields, "at": format_clock(hint.at)}))
    for message in state.messages:
        if message.key not in messages_seen:
            fields = {"key": message.key, "text": message.text, "at": format_clock(message.at)}
            pending.append(("message_shown", fields))
    return pending


def _entry_fields(state: Wanted) -> dict[str, Any]:
    if state.entry is None:
        return {"index": None, "entry": None, "type": "finished"}
    return {
        "index": state.index,
        "entry": state.entry.name,
        "type": "phase" if isinstance(state.entry, Phase) else "break",
        "start": format_clock(state.entry.start),
        "end": format_clock(state.entry.end),
    }


def boundaries(program: Program) -> tuple[int, ...]:
    """Where `next` can jump: each entry's start, and the program's end."""
    return (*(entry.start for entry in program.agenda), program.length)


def find_entry(program: Program, query: str) -> Phase | Break:
    """The entry `goto` means: its exact name, else the one name that contains the query."""
    exact = [e for e in program.agenda if e.name == query]
    matches = exact or [e for e in program.agenda if query.casefold() in e.name.casefold()]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(repr(e.name) for e in matches or program.agenda)
    problem = "several entries match" if matches else "no entry matches"
    raise ValueError(f"{problem} {query!r}: {names}")
