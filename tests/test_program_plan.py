"""The wanted state: what the lab should run at each program time, and what the journal lacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drill.agenda import REVEAL_FLAG, Break
from drill.program.clock import ProgramClock
from drill.program.journal import Journal, journal_path
from drill.program.plan import find_entry, pending_events, wanted
from drill.program.rotation import draw
from drill.scenarios import Program, load_program
from tests.conftest import REPO_ROOT

SCENARIOS_YAML = REPO_ROOT / "scenarios.yaml"
SEED = 2026
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def t(text: str) -> int:
    """Program seconds from "H:MM" or "H:MM:SS"."""
    hours, minutes, *seconds = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + sum(seconds)


@pytest.fixture(scope="module")
def seed_program() -> Program:
    return load_program(SCENARIOS_YAML)


def culprit(program: Program) -> str:
    (live,) = draw(program, SEED).live
    return live


def test_before_the_dark_room_nothing_is_on(seed_program: Program) -> None:
    """At 0:14:59 the welcome runs: no scenario, flag, traffic, decoy or hint."""
    state = wanted(seed_program, t("0:14:59"), SEED)
    assert state.entry is not None and state.entry.name == "welcome and setup"
    assert state.live == () and state.flags == {} and state.traffic == frozenset()
    assert state.decoys == () and state.hints == () and not state.reveal
    assert state.time_left == 1
    assert state.next_entry is not None and state.next_entry.name.endswith(
        "dark room investigation"
    )
    assert [m.key for m in state.messages] == ["agenda[0].actions[0]"]


def test_the_dark_room_turns_the_culprits_triggers_and_traffic_on(seed_program: Program) -> None:
    """At 0:15 the drawn scenario's triggers are live as the scenario defines them, and no
    other scenario's; every scenario of the phase has its background traffic (traffic on the
    culprit alone would name it)."""
    name = culprit(seed_program)
    state = wanted(seed_program, t("0:15"), SEED)
    assert state.entry is not None and state.entry.name == "1: dark room investigation"
    assert state.live == (name,) == state.drawn
    triggers = seed_program.scenario(name).triggers
    assert state.flags == {t.flag: (t.variant, t.percent) for t in triggers}
    assert state.traffic == set(state.entry.scenarios) and name in state.traffic
    assert len(state.traffic) == 3
    assert state.questions == ("What did you rule out, and from which signal?",)
    assert state.hints == (), "the dark room gives no hints"


def test_a_tea_break_runs_nothing_and_asks_its_questions(seed_program: Program) -> None:
    """At 1:05 the first break: triggers and traffic off, the seed's reflection questions."""
    state = wanted(seed_program, t("1:05"), SEED)
    assert isinstance(state.entry, Break) and state.entry.name == "first tea break"
    assert state.flags == {} and state.traffic == frozenset() and state.live == ()
    assert state.questions[0] == "What early signals did you observe?"
    assert len(state.questions) == 3
    assert state.time_left == 5 * 60


def test_hints_and_decoys_arrive_on_schedule(seed_program: Program) -> None:
    """In the deep dive hint 1 of the culprit comes at 1:20 and hint 2 at 1:35; the 1:15-1:30
    decoy runs on a bystander service and stops on time."""
    name = culprit(seed_program)
    before = wanted(seed_program, t("1:19:59"), SEED)
    assert before.hints == ()
    assert [d.kind for d in before.decoys] == ["log_flood"]
    assert before.decoys[0].service not in seed_program.scenario(name).services
    first = wanted(seed_program, t("1:20"), SEED)
    assert [(h.scenario, h.number) for h in first.hints] == [(name, 1)]
    assert first.hints[0].text == seed_program.scenario(name).hints[0]
    later = wanted(seed_program, t("1:35"), SEED)
    assert [(h.number, h.at) for h in later.hints] == [(1, t("1:20")), (2, t("1:35"))]
    assert later.decoys == ()


def test_reveal_comes_on_for_the_post_mortem_and_stays_into_the_wrap_up(
    seed_program: Program,
) -> None:
    """Reveal mode is off while teams investigate, on from 2:30, still on in the wrap-up."""
    assert not wanted(seed_program, t("2:29:59"), SEED).reveal
    post_mortem = wanted(seed_program, t("2:30"), SEED)
    assert post_mortem.reveal and post_mortem.flags[REVEAL_FLAG] == ("on", None)
    wrap_up = wanted(seed_program, t("2:55"), SEED)
    assert wrap_up.reveal and set(wrap_up.flags) == {REVEAL_FLAG}


@pytest.mark.parametrize("elapsed", ["3:00", "3:00:01", "7:00"])
def test_after_the_length_the_program_is_finished_and_everything_is_off(
    seed_program: Program, elapsed: str
) -> None:
    """At and after 3:00: no entry, no flags (reveal included), no traffic, no decoys."""
    state = wanted(seed_program, t(elapsed), SEED)
    assert state.finished and state.entry is None and state.next_entry is None
    assert state.flags == {} and state.traffic == frozenset() and state.decoys == ()
    assert not state.reveal
    assert [h.number for h in state.hints] == [1, 2, 3], "released hints stay released"


def test_the_wanted_state_is_a_function_of_program_time_and_seed(seed_program: Program) -> None:
    """Same program, time and seed, same answer; another seed may draw another culprit."""
    for minute in range(0, 185, 5):
        assert wanted(seed_program, minute * 60, SEED) == wanted(seed_program, minute * 60, SEED)
    culprits = {wanted(seed_program, t("0:30"), seed).live for seed in range(10)}
    assert len(culprits) > 1
    with pytest.raises(ValueError):
        wanted(seed_program, -1, SEED)


CUSTOM_AGENDA = """
length: "1:00"
agenda:
  - phase: drills
    start: "0:00"
    end: "0:50"
    scenarios: [fp-drift, circular-deadlock]
    triggers: "on"
    traffic: "on"
    actions:
      - at: "0:10"
        flag: ledger.commit_latency_ms
        variant: very_slow
        percent: 50
      - at: "0:10"
        flag: chain.b_latency_ms
        variant: very_slow
      - at: "0:20"
        traffic: "off"
      - at: "0:30"
        flag: feed.db_latency_ms
        variant: cross_zone
  - break: rest
    start: "0:50"
    end: "1:00"
"""


def custom(tmp_path: Path, live: int) -> Program:
    """The seed's scenarios with a one-phase agenda whose rotation draws `live` of two."""
    text = SCENARIOS_YAML.read_text()
    scenarios = text[: text.index("# The seed's agenda")]
    rotation = f"rotation:\n  seed: {SEED}\n  live: {live}\n"
    path = tmp_path / "scenarios.yaml"
    path.write_text(scenarios + CUSTOM_AGENDA + rotation)
    return load_program(path)


def test_flag_actions_take_effect_at_their_offset(tmp_path: Path) -> None:
    """At 0:10 a flag action overrides a trigger's variant and percent; at 0:20 traffic stops
    while the triggers stay on; the phase's end clears them all."""
    program = custom(tmp_path, live=2)
    start = wanted(program, t("0:09:59"), SEED)
    assert start.flags["ledger.commit_latency_ms"] == ("slow", 3.0)
    assert start.flags["chain.b_latency_ms"] == ("slow", None)
    assert start.traffic == {"fp-drift", "circular-deadlock"}
    escalated = wanted(program, t("0:10"), SEED)
    assert escalated.flags["ledger.commit_latency_ms"] == ("very_slow", 50.0)
    assert escalated.flags["chain.b_latency_ms"] == ("very_slow", None)
    quiet = wanted(program, t("0:20"), SEED)
    assert quiet.traffic == frozenset()
    assert quiet.flags["ledger.fx_conversion"] == ("on", None), "triggers stay on"
    assert "feed.db_latency_ms" not in quiet.flags
    late = wanted(program, t("0:30"), SEED)
    assert "feed.db_latency_ms" not in late.flags, "n-plus-one's trigger waits for n-plus-one"
    assert wanted(program, t("0:50"), SEED).flags == {}


def test_a_flag_action_waits_for_a_run_in_which_its_scenario_is_live(tmp_path: Path) -> None:
    """With one scenario drawn, an action on the other scenario's trigger does not set it."""
    program = custom(tmp_path, live=1)
    (name,) = draw(program, SEED).live
    other = {"fp-drift": "chain.b_latency_ms", "circular-deadlock": "ledger.commit_latency_ms"}
    state = wanted(program, t("0:15"), SEED)
    assert other[name] not in state.flags
    own = next(iter(set(other.values()) - {other[name]}))
    assert state.flags[own][0] == "very_slow"


def owed(program: Program, journal: Journal, elapsed: float) -> list[tuple[str, dict[str, Any]]]:
    """The journal lines the wanted state at `elapsed` still calls for."""
    return pending_events(program, journal.read().events, wanted(program, elapsed, SEED))


def journal_all(program: Program, journal: Journal, elapsed: float, when: datetime) -> None:
    """What a runner does after reconciling: journal each event the wanted state still lacks."""
    for kind, fields in owed(program, journal, elapsed):
        journal.append(kind, "program", now=when, **fields)


def test_nothing_is_journaled_twice_and_a_restart_catches_up(
    seed_program: Program, tmp_path: Path
) -> None:
    """Ticks journal each phase change, hint and message once; a runner killed at 1:25 and
    started again at 2:05 (its clock read back from JSON) journals what it missed, once."""
    journal = Journal(journal_path(tmp_path))
    journal.append("program_started", "instructor", now=T0, seed=SEED)
    run = ProgramClock.start(T0)
    for minute in [0, 1, 14, 15, 16, 60, 70, 80, 85]:
        now = T0 + timedelta(minutes=minute)
        journal_all(seed_program, journal, run.elapsed(now), now)
    assert owed(seed_program, journal, t("1:25")) == []
    kinds = [e.kind for e in journal.read().events]
    assert kinds.count("phase_changed") == 4, "welcome, dark room, break, deep dive"
    assert kinds.count("hint_released") == 1 and kinds.count("message_shown") == 2

    restarted = ProgramClock.from_json(run.to_json())
    now = T0 + timedelta(minutes=125)
    missed = owed(seed_program, journal, restarted.elapsed(now))
    assert [kind for kind, _ in missed] == [
        "phase_changed",
        "hint_released",
        "hint_released",
        "message_shown",
    ]
    assert missed[0][1]["entry"] == "3: AI-assisted fix"
    assert missed[0][1]["passed"] == ["second tea break"], "a missed entry is named, not lost"
    released = [
        (fields["hint"], fields["at"]) for kind, fields in missed if kind == "hint_released"
    ]
    assert released == [(2, "1:35"), (3, "2:00")], "each at the time it was due, not at restart"
    journal_all(seed_program, journal, restarted.elapsed(now), now)
    assert owed(seed_program, journal, t("2:05")) == []


def test_a_new_run_journals_its_events_afresh(seed_program: Program, tmp_path: Path) -> None:
    """Events before the last program_started belong to an earlier run and count for nothing."""
    journal = Journal(journal_path(tmp_path))
    journal.append("program_started", "instructor", now=T0, seed=SEED)
    journal_all(seed_program, journal, t("1:40"), T0)
    assert owed(seed_program, journal, t("1:40")) == []
    journal.append("program_started", "instructor", now=T0, seed=SEED)
    again = owed(seed_program, journal, t("1:40"))
    assert [kind for kind, _ in again].count("hint_released") == 2


def test_the_end_of_the_program_is_journaled_as_a_phase_change(
    seed_program: Program, tmp_path: Path
) -> None:
    """Once finished, the journal is owed one phase change to "finished" (naming the wrap-up
    if no tick saw it), then nothing, however long the runner keeps ticking."""
    journal = Journal(journal_path(tmp_path))
    journal_all(seed_program, journal, t("2:40"), T0)
    due = owed(seed_program, journal, t("3:00"))
    assert due == [
        (
            "phase_changed",
            {
                "index": None,
                "entry": None,
                "type": "finished",
                "passed": ["wrap-up, metrics review"],
            },
        )
    ]
    journal_all(seed_program, journal, t("3:00"), T0)
    assert owed(seed_program, journal, t("3:30")) == []


def test_goto_finds_an_entry_by_name_or_a_unique_part_of_it(seed_program: Program) -> None:
    """goto takes an exact name or a unique fragment, and lists the names otherwise."""
    assert find_entry(seed_program, "dark room").start == t("0:15")
    assert find_entry(seed_program, "second tea break").start == t("1:50")
    with pytest.raises(ValueError, match="several entries match 'tea'"):
        find_entry(seed_program, "tea")
    with pytest.raises(ValueError, match="no entry matches 'lunch'"):
        find_entry(seed_program, "lunch")
