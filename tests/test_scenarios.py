"""scenarios.yaml validation, and agreement between the flag catalog, the docs and the program."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drill.scenarios import SERVICE_FIGURES, ScenarioFileError, load_program, parse_duration
from faults import load_catalog
from tests.conftest import REPO_ROOT

CATALOG = load_catalog()
DOCS = [REPO_ROOT / "docs" / "instructor-guide.md", REPO_ROOT / "README.md"]
FLAG_NAME = re.compile(r"`((?:lab|ledger|chain|feed|profiles|generic)\.[a-z_]+)`")


def test_the_committed_program_is_valid() -> None:
    """scenarios.yaml loads, and fp-drift turns on real flags."""
    program = load_program(REPO_ROOT / "scenarios.yaml")
    assert "fp-drift" in program.scenarios
    for trigger in program.scenario("fp-drift").triggers:
        assert trigger.variant in CATALOG[trigger.flag].variants


def test_every_trigger_flag_is_documented_and_every_documented_flag_exists() -> None:
    """The catalog, the instructor guide and scenarios.yaml name the same flags."""
    guide = DOCS[0].read_text()
    documented = set(FLAG_NAME.findall(guide)) - SERVICE_FIGURES  # figures share the prefixes
    assert documented == set(CATALOG.flags), "docs/instructor-guide.md flag table is out of date"
    for doc in DOCS:
        unknown = set(FLAG_NAME.findall(doc.read_text())) - set(CATALOG.flags) - SERVICE_FIGURES
        assert not unknown, f"{doc.name} names flags the catalog lacks: {unknown}"
    program = load_program(REPO_ROOT / "scenarios.yaml")
    used = {t.flag for s in program.scenarios.values() for t in s.triggers}
    triggers = {k for k, spec in CATALOG.flags.items() if spec.kind == "trigger"}
    assert used == triggers, "a trigger in the catalog is used by no scenario, or vice versa"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenarios.yaml"
    path.write_text(text)
    return path


def broken(replace: str, with_: str) -> str:
    original = (REPO_ROOT / "scenarios.yaml").read_text()
    assert replace in original
    return original.replace(replace, with_, 1)


@pytest.mark.parametrize(
    ("replace", "with_", "expected"),
    [
        (
            "users: 20",
            "users: lots",
            r"scenarios\.fp-drift\.load\.users: Input should be a valid integer",
        ),
        (
            "duration: 60s",
            "duration: soon",
            r"scenarios\.fp-drift\.load\.duration: expected a duration",
        ),
        ("figure: p95_ms", "figure: p95", r"scenarios\.fp-drift\.sla\[3\]: unknown figure 'p95'"),
        (
            "flag: ledger.fx_conversion",
            "flag: ledger.fx",
            r"scenarios\.fp-drift\.triggers\[0\]\.flag: unknown flag 'ledger.fx'",
        ),
        (
            "variant: slow",
            "variant: glacial",
            r"triggers\[1\]\.variant: ledger.commit_latency_ms has no variant 'glacial'",
        ),
        (
            "percent: 3",
            "percent: 300",
            r"triggers\[1\]\.percent: Input should be less than or equal",
        ),
        ("version: 2", "version: 3", r"version: Input should be 2"),
        ("version: 2", "version: 1", r"version: version 1 is retired: its phases: became agenda:"),
        ("warmup: 12s", "warmup: 90s", r"scenarios\.n-plus-one\.load: warmup must be shorter"),
        (
            "    scenarios: [fp-drift, circular-deadlock, n-plus-one]\n",
            "    scenarios: [fp-drift2, circular-deadlock, n-plus-one]\n",
            r"agenda\[1\]\.scenarios\[0\]: no scenario 'fp-drift2'",
        ),
    ],
)
def test_bad_program_names_line_and_place(
    tmp_path: Path, replace: str, with_: str, expected: str
) -> None:
    """Each kind of mistake is reported with file, line number and the dotted path."""
    path = write(tmp_path, broken(replace, with_))
    with pytest.raises(ScenarioFileError, match=expected) as info:
        load_program(path)
    assert str(info.value).startswith(f"{path}:")
    assert int(str(info.value).split(":")[1]) > 0


def test_the_reported_line_is_the_offending_line(tmp_path: Path) -> None:
    """An invalid value is reported at the line where it stands."""
    text = broken("spawn_rate: 10", "spawn_rate: -1")
    path = write(tmp_path, text)
    with pytest.raises(ScenarioFileError) as info:
        load_program(path)
    line = int(str(info.value).split(":")[1])
    assert path.read_text().splitlines()[line - 1].strip() == "spawn_rate: -1"


def test_yaml_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    """Broken YAML is reported with line and column, not a traceback."""
    path = write(tmp_path, "version: 2\nscenarios:\n  a: [unclosed\n")
    with pytest.raises(ScenarioFileError, match=r"scenarios.yaml:\d+:\d+: not valid YAML"):
        load_program(path)


def test_durations() -> None:
    """Durations accept seconds, units and refuse nonsense."""
    assert parse_duration("90s") == 90
    assert parse_duration("1.5m") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration(30) == 30
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == parse_duration("90m") == 5400
    assert parse_duration("1m 30s") == 90
    for bad in ("", "ten", "-5s", 0, True, "3h-1m", "5x", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
