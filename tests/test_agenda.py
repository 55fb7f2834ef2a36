"""scenarios.yaml's agenda: the seed's 180 minutes, and each mistake named at file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from drill.agenda import Break, Phase, format_clock, parse_clock
from drill.program.rotation import draw
from drill.scenarios import ScenarioFileError, load_program
from tests.conftest import REPO_ROOT

SCENARIOS_YAML = REPO_ROOT / "scenarios.yaml"
REFLECTION = [
    "What early signals did you observe?",
    "Which tracing methods were most effective?",
    "Any assumptions that delayed root cause detection?",
]


def test_the_seed_agenda_fills_180_minutes_with_its_phases_and_breaks() -> None:
    """The committed agenda runs 0:00 to 3:00 end to end, with the seed's phases and breaks."""
    program = load_program(SCENARIOS_YAML)
    assert program.length == 180 * 60
    assert sum(entry.end - entry.start for entry in program.agenda) == 180 * 60
    spans = [(type(e), format_clock(e.start), format_clock(e.end)) for e in program.agenda]
    assert spans == [
        (Phase, "0:00", "0:15"),
        (Phase, "0:15", "1:00"),
        (Break, "1:00", "1:10"),
        (Phase, "1:10", "1:50"),
        (Break, "1:50", "2:00"),
        (Phase, "2:00", "2:30"),
        (Phase, "2:30", "2:50"),
        (Phase, "2:50", "3:00"),
    ]


def test_the_tea_breaks_ask_the_seed_reflection_questions() -> None:
    """Both breaks carry the seed's three questions; the investigating phases keep checkpoints."""
    program = load_program(SCENARIOS_YAML)
    breaks = [e for e in program.agenda if isinstance(e, Break)]
    assert [b.questions for b in breaks] == [REFLECTION, REFLECTION]
    investigating = [e for e in program.agenda if isinstance(e, Phase) and e.triggers == "on"]
    assert all(phase.checkpoint for phase in investigating[:3])


def test_workshop_times() -> None:
    """H:MM reads as seconds; minutes past 59 and times without a colon are refused."""
    assert parse_clock("0:15") == 900
    assert parse_clock("3:00") == 10800
    assert format_clock(4200) == "1:10"
    assert format_clock(4230) == "1:10:30"
    for bad in ("0:99", "0:60", "15", "0:5", 90, "1:10:00", ""):
        with pytest.raises(ValueError):
            parse_clock(bad)


def culprit_service() -> str:
    """A service of the scenario the file's own seed makes live."""
    program = load_program(SCENARIOS_YAML)
    assert program.rotation is not None
    live = draw(program, program.rotation.seed).live
    return program.scenario(live[0]).services[0]


FIRST_DECOY = "    - kind: latency\n"
DEEP_DIVE_HINT = '      - at: "0:10"\n        hint: 1\n'

# (what to replace, with what, the error's dotted path and message, text on the reported line)
MISTAKES = [
    ('    end: "0:15"', '    end: "0:99"', r"agenda\[0\]\.end: '0:99' is not a time", '"0:99"'),
    (
        'start: "1:00"',
        'start: "0:55"',
        r"agenda\[2\]\.start: overlaps agenda\[1\] \(1: dark room investigation\)",
        '"0:55"',
    ),
    (
        'start: "1:50"',
        'start: "0:10"',
        r"agenda\[4\]\.start: out of order: starts at 0:10, before agenda\[3\]",
        '"0:10"',
    ),
    ('end: "1:10"', 'end: "1:05"', r"agenda\[3\]\.start: a gap from 1:05 to 1:10", '"1:10"'),
    ('end: "1:10"', 'end: "0:50"', r"agenda\[2\]\.end: ends at 0:50, not after", '"0:50"'),
    (
        'length: "3:00"',
        'length: "3:10"',
        r"length: the agenda ends at 3:00, not at the length 3:10",
        '"3:10"',
    ),
    (
        'at: "0:25"',
        'at: "0:45"',
        r"agenda\[3\]\.actions\[1\]\.at: 0:45 into a phase that lasts 0:40",
        '"0:45"',
    ),
    (
        DEEP_DIVE_HINT,
        '      - at: "0:10"\n        flag: ledger.fx\n        variant: "on"\n',
        r"agenda\[3\]\.actions\[0\]\.flag: unknown flag 'ledger.fx'",
        "ledger.fx",
    ),
    (
        DEEP_DIVE_HINT,
        '      - at: "0:10"\n        flag: ledger.commit_latency_ms\n        variant: glacial\n',
        r"agenda\[3\]\.actions\[0\]\.variant: ledger.commit_latency_ms has no variant 'glacial'",
        "glacial",
    ),
    (
        DEEP_DIVE_HINT,
        '      - at: "0:10"\n        flag: lab.reveal\n        variant: "on"\n',
        r"agenda\[3\]\.actions\[0\]\.flag: switch lab.reveal with reveal:",
        "lab.reveal",
    ),
    (
        DEEP_DIVE_HINT,
        '      - at: "0:10"\n        hint: 1\n        message: and a message\n',
        r"agenda\[3\]\.actions\[0\]: an action does one thing",
        '"0:10"',
    ),
    ("hint: 3", "hint: 4", r"agenda\[5\]\.actions\[1\]\.hint: \S+ has 3 hints, not 4", "hint: 4"),
    (
        "  - break: first tea break",
        "  - pause: first tea break",
        r"agenda\[2\]: an agenda entry is a phase \(phase: name\) or a break",
        "pause:",
    ),
    (
        'triggers: "on"',
        'triggers: "maybe"',
        r"agenda\[1\]\.triggers: Input should be 'off' or 'on'",
        '"maybe"',
    ),
    (
        "break: second tea break",
        "break: first tea break",
        r"agenda\[4\]\.break: another entry is named 'first tea break'",
        "break: first",
    ),
    ("  live: 1", "  live: 4", r"rotation\.live: 4 live per run, but the agenda names 3", "4"),
    (
        FIRST_DECOY,
        FIRST_DECOY + '      route: "/accounts"\n',
        r"rotation\.decoys\[0\]: a route belongs to a service",
        "kind: latency",
    ),
    (
        FIRST_DECOY,
        FIRST_DECOY + "      service: billing\n",
        r"rotation\.decoys\[0\]\.service: unknown service 'billing'",
        "billing",
    ),
    (
        FIRST_DECOY,
        "    - kind: earthquake\n",
        r"rotation\.decoys\[0\]\.kind: Input should be 'latency', 'error_rate'",
        "earthquake",
    ),
    (
        '    - kind: log_flood\n      start: "1:15"',
        '    - kind: latency\n      start: "0:30"',
        r"rotation\.decoys\[1\]\.start: overlaps rotation\.decoys\[0\], another latency decoy",
        '"0:30"',
    ),
    (
        "    - kind: log_flood\n",
        "    - kind: error_rate\n",
        r"rotation\.decoys\[1\]\.percent: an error_rate decoy on 100% of requests is an outage",
        "kind: error_rate",
    ),
    (
        FIRST_DECOY + "      percent: 20\n",
        "    - kind: error_rate\n      percent: 80\n",
        r"rotation\.decoys\[0\]\.percent: an error_rate decoy on 80% of requests is an outage",
        "percent: 80",
    ),
]


@pytest.mark.parametrize(("replace", "with_", "expected", "on_line"), MISTAKES)
def test_each_agenda_mistake_names_file_line_and_dotted_path(
    tmp_path: Path, replace: str, with_: str, expected: str, on_line: str
) -> None:
    """A broken agenda is refused with file:line: dotted.path, and the line is the culprit."""
    original = SCENARIOS_YAML.read_text()
    assert replace in original
    path = tmp_path / "scenarios.yaml"
    path.write_text(original.replace(replace, with_, 1))
    with pytest.raises(ScenarioFileError, match=expected) as info:
        load_program(path)
    where, line, _ = str(info.value).split(":", 2)
    assert where == str(path)
    assert on_line in path.read_text().splitlines()[int(line) - 1]


def test_a_decoy_on_the_culprits_service_is_refused(tmp_path: Path) -> None:
    """A decoy must hit a service that is not the culprit under the file's seed."""
    service = culprit_service()
    path = tmp_path / "scenarios.yaml"
    text = SCENARIOS_YAML.read_text().replace(
        FIRST_DECOY, f"{FIRST_DECOY}      service: {service}\n"
    )
    path.write_text(text)
    with pytest.raises(ScenarioFileError, match=r"a decoy hits a service that is not") as info:
        load_program(path)
    message = str(info.value)
    assert "rotation.decoys[0].service: seed 2026 makes" in message
    line = int(message.split(":")[1])
    assert path.read_text().splitlines()[line - 1].strip() == f"service: {service}"


def test_a_bare_on_or_off_means_the_switch(tmp_path: Path) -> None:
    """YAML reads an unquoted on as true; the agenda takes it as the switch "on"."""
    path = tmp_path / "scenarios.yaml"
    path.write_text(SCENARIOS_YAML.read_text().replace('triggers: "on"', "triggers: on"))
    phase = load_program(path).agenda[1]
    assert isinstance(phase, Phase) and phase.triggers == "on"


def test_a_seed_draws_the_same_run_every_time_and_seeds_differ() -> None:
    """Rotation is a function of the seed: pinned draws for seeds 0-4, and variety across."""
    program = load_program(SCENARIOS_YAML)
    pinned = {seed: draw(program, seed).live for seed in range(5)}
    assert pinned == {
        0: ("n-plus-one",),
        1: ("fp-drift",),
        2: ("n-plus-one",),
        3: ("fp-drift",),
        4: ("circular-deadlock",),
    }
    assert draw(program, 7) == draw(program, 7)
    assert {draw(program, seed).live for seed in range(30)} == {
        ("fp-drift",),
        ("circular-deadlock",),
        ("n-plus-one",),
    }


def test_decoys_land_on_bystanders_only() -> None:
    """For any seed, every decoy hits a service no live scenario uses, and none is dropped."""
    program = load_program(SCENARIOS_YAML)
    assert program.rotation is not None
    targets = set()
    for seed in range(50):
        run = draw(program, seed)
        culprits = {s for name in run.live for s in program.scenario(name).services}
        assert len(run.decoys) == len(program.rotation.decoys) and not run.problems
        assert all(d.service is not None and d.service not in culprits for d in run.decoys)
        targets |= {d.service for d in run.decoys}
    assert len(targets) > 2, "the seed spreads decoys over the bystanders"
