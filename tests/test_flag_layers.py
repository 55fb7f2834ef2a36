"""Layered flag state: program < instructor < verify overlay, each writer restoring only its own."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drill.cli import app
from drill.scenarios import load_program
from faults import (
    DEFAULT,
    INSTRUCTOR,
    PROGRAM,
    UNLAYERED,
    VERIFY,
    FlagStateError,
    clear_layer,
    describe,
    layer_flags,
    live_flags,
    load_catalog,
    read_document,
    recompute_document,
    replace_layer,
    set_flags,
    set_layer_flags,
    state_path,
    verify_overlay,
)
from tests.conftest import REPO_ROOT

CATALOG = load_catalog()
FX, LATENCY, CALLBACK = "ledger.fx_conversion", "ledger.commit_latency_ms", "chain.fraud_callback"
PROFILES, HEAVY = "profiles.latency_ms", "feed.heavy_users"
runner = CliRunner()


def live(directory: Path) -> dict[str, tuple[str, float | None]]:
    """Each flag's variant and share as services read them from flags.json."""
    flags = read_document(state_path(directory), CATALOG)["flags"]
    return {key: (describe(d)[0], describe(d)[2]) for key, d in flags.items()}


def on(directory: Path) -> dict[str, tuple[str, float | None]]:
    """Only the flags that are not at their catalog default."""
    return {
        key: value
        for key, value in live(directory).items()
        if value != (CATALOG[key].default_variant, None)
    }


def layer_file(directory: Path, layer: str) -> Path:
    return directory / "layers" / f"{layer}.json"


def test_a_later_layer_wins_and_clearing_it_uncovers_the_one_below(tmp_path: Path) -> None:
    """Program < instructor: the instructor's value wins; cleared, the program's is back."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None), LATENCY: ("slow", 5)})
    set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {FX: ("off", None)})
    assert on(tmp_path) == {LATENCY: ("slow", 5.0)}
    sources = live_flags(tmp_path, CATALOG)
    assert (sources[FX].layer, sources[LATENCY].layer) == (INSTRUCTOR, PROGRAM)
    assert sources[CALLBACK].layer == DEFAULT
    assert clear_layer(tmp_path, CATALOG, INSTRUCTOR) == [FX]
    assert on(tmp_path) == {FX: ("on", None), LATENCY: ("slow", 5.0)}


def test_layer_files_hold_only_their_writers_flags(tmp_path: Path) -> None:
    """Each layer file holds its own flags with variant, percent, by and an offset timestamp."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {LATENCY: ("slow", 5)}, by="program: phase 1")
    set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {FX: ("on", None)})
    program = json.loads(layer_file(tmp_path, PROGRAM).read_text())
    entry = program["flags"][LATENCY]
    assert (program["layer"], list(program["flags"])) == (PROGRAM, [LATENCY])
    assert (entry["variant"], entry["percent"], entry["by"]) == ("slow", 5.0, "program: phase 1")
    assert entry["at"].endswith("+00:00")
    instructor = json.loads(layer_file(tmp_path, INSTRUCTOR).read_text())
    assert list(instructor["flags"]) == [FX] and instructor["flags"][FX]["by"] == INSTRUCTOR


def _todays_verify_document(tmp_path: Path, triggers: dict[str, tuple[str, float | None]]) -> bytes:
    """The flags.json that verify wrote before layers: the triggers, every other flag off."""
    before = tmp_path / "before-layers"
    set_flags(before, CATALOG, {FX: ("on", None)})
    set_flags(before, CATALOG, triggers, reset_others=True)
    return state_path(before).read_bytes()


@pytest.mark.parametrize("scenario", ["fp-drift", "circular-deadlock", "n-plus-one"])
def test_verify_overlay_serves_what_verify_served_and_restores_only_itself(
    tmp_path: Path, scenario: str
) -> None:
    """During the overlay flags.json is byte for byte today's verify document; after it, the
    program's and the instructor's flags are back, with a change the program made meanwhile."""
    program = load_program(REPO_ROOT / "scenarios.yaml", CATALOG)
    triggers = {t.flag: (t.variant, t.percent) for t in program.scenario(scenario).triggers}
    lab = tmp_path / "lab"
    set_layer_flags(lab, CATALOG, PROGRAM, {HEAVY: ("on", None)})
    set_layer_flags(lab, CATALOG, INSTRUCTOR, {PROFILES: ("stalled", 50)})
    with verify_overlay(lab, CATALOG, triggers, by=f"verify {scenario}") as document:
        during = state_path(lab).read_bytes()
        assert during == _todays_verify_document(tmp_path, triggers)
        assert document == json.loads(during)
        set_layer_flags(lab, CATALOG, PROGRAM, {CALLBACK: ("on", None)})
        set_layer_flags(lab, CATALOG, INSTRUCTOR, {FX: ("on", None)})
        assert state_path(lab).read_bytes() == during, "the run stays isolated"
        assert live_flags(lab, CATALOG)[HEAVY].layer == VERIFY
    assert on(lab) == {
        HEAVY: ("on", None),
        PROFILES: ("stalled", 50.0),
        CALLBACK: ("on", None),
        FX: ("on", None),
    }
    assert not layer_file(lab, VERIFY).exists()


def test_a_baseline_overlay_puts_every_flag_at_its_default(tmp_path: Path) -> None:
    """An overlay with no triggers serves the catalog defaults, whatever the layers below hold."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)})
    with verify_overlay(tmp_path, CATALOG, {}, by="verify fp-drift --baseline"):
        assert on(tmp_path) == {}
        assert json.loads(state_path(tmp_path).read_text()) == CATALOG.defaults_document()
    assert on(tmp_path) == {FX: ("on", None)}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_overlay_is_lifted_when_the_run_fails_or_is_interrupted(
    tmp_path: Path, error: type[BaseException]
) -> None:
    """An exception or Ctrl-C inside the run still removes the overlay and only it."""
    set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {PROFILES: ("slow", None)})
    with pytest.raises(error):
        with verify_overlay(tmp_path, CATALOG, {FX: ("on", None)}, by="verify fp-drift"):
            assert on(tmp_path) == {FX: ("on", None)}
            raise error()
    assert on(tmp_path) == {PROFILES: ("slow", None)}
    assert not layer_file(tmp_path, VERIFY).exists()


def test_a_second_overlay_is_refused_while_a_live_run_holds_it(tmp_path: Path) -> None:
    """Two verify runs cannot overlay one lab at once; the first keeps its overlay."""
    with verify_overlay(tmp_path, CATALOG, {FX: ("on", None)}, by="verify fp-drift"):
        with pytest.raises(FlagStateError, match="holds the verify overlay.*reset --all"):
            with verify_overlay(tmp_path, CATALOG, {}, by="verify fp-drift --baseline"):
                pass  # pragma: no cover
        assert on(tmp_path) == {FX: ("on", None)}
    assert on(tmp_path) == {}


def test_an_overlay_left_by_a_dead_run_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crashed run's overlay (its pid is gone) does not block the next run, which logs it."""
    import socket

    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with verify_overlay(tmp_path, CATALOG, {FX: ("on", None)}, by="verify fp-drift"):
        stale = json.loads(layer_file(tmp_path, VERIFY).read_text())
    stale["owner"].update(pid=pid_max + 1, host=socket.gethostname())
    layer_file(tmp_path, VERIFY).write_text(json.dumps(stale))
    recompute_document(tmp_path, CATALOG)
    assert on(tmp_path) == {FX: ("on", None)}, "the dead run's overlay still holds"
    with caplog.at_level(logging.WARNING, logger="faults"):
        with verify_overlay(tmp_path, CATALOG, {LATENCY: ("slow", None)}, by="verify"):
            assert on(tmp_path) == {LATENCY: ("slow", None)}
    assert "overlay left by a run that is gone" in caplog.text
    assert on(tmp_path) == {}


def test_an_overlay_cleared_meanwhile_does_not_take_a_later_runs_overlay_with_it(
    tmp_path: Path,
) -> None:
    """After `reset --all` and a new run, the first run's exit leaves the new overlay alone."""
    first = verify_overlay(tmp_path, CATALOG, {FX: ("on", None)}, by="first")
    first.__enter__()
    clear_layer(tmp_path, CATALOG, VERIFY)
    second = verify_overlay(tmp_path, CATALOG, {CALLBACK: ("on", None)}, by="second")
    second.__enter__()
    first.__exit__(None, None, None)
    assert on(tmp_path) == {CALLBACK: ("on", None)}
    second.__exit__(None, None, None)
    assert on(tmp_path) == {}


def test_replace_layer_holds_exactly_the_wanted_flags_and_leaves_other_layers(
    tmp_path: Path,
) -> None:
    """A replace sets, changes and drops the layer's flags to match; the instructor's stand."""
    set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {PROFILES: ("slow", None)})
    first = replace_layer(tmp_path, CATALOG, PROGRAM, {FX: ("on", None), LATENCY: ("slow", 3)})
    assert first.set == {FX: ("on", None), LATENCY: ("slow", 3.0)} and first.cleared == ()
    second = replace_layer(
        tmp_path, CATALOG, PROGRAM, {LATENCY: ("very_slow", 3), CALLBACK: ("on", None)}
    )
    assert second.set == {LATENCY: ("very_slow", 3.0), CALLBACK: ("on", None)}
    assert second.cleared == (FX,)
    assert set(layer_flags(tmp_path, CATALOG, PROGRAM)) == {LATENCY, CALLBACK}
    assert on(tmp_path) == {
        LATENCY: ("very_slow", 3.0),
        CALLBACK: ("on", None),
        PROFILES: ("slow", None),
    }
    emptied = replace_layer(tmp_path, CATALOG, PROGRAM, {})
    assert emptied.cleared == (CALLBACK, LATENCY) and not layer_file(tmp_path, PROGRAM).exists()
    assert on(tmp_path) == {PROFILES: ("slow", None)}


def test_replace_layer_with_nothing_to_change_writes_nothing(tmp_path: Path) -> None:
    """The runner replaces on every tick: an unchanged layer keeps its entries and files."""
    replace_layer(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)}, by="runner")
    before = (state_path(tmp_path).stat().st_mtime_ns, layer_file(tmp_path, PROGRAM).read_text())
    again = replace_layer(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)}, by="someone else")
    assert again.empty
    after = (state_path(tmp_path).stat().st_mtime_ns, layer_file(tmp_path, PROGRAM).read_text())
    assert after == before
    assert layer_flags(tmp_path, CATALOG, PROGRAM)[FX].by == "runner"


def test_replace_layer_is_one_write_that_readers_never_see_half_of(tmp_path: Path) -> None:
    """Readers polling flags.json during replaces see the old set or the new, never a mix."""
    old = {FX: ("on", None), LATENCY: ("slow", None)}
    new = {CALLBACK: ("on", None), PROFILES: ("slow", None)}
    replace_layer(tmp_path, CATALOG, PROGRAM, old)
    seen: set[frozenset[str]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(frozenset(on(tmp_path)))

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for _ in range(40):
            replace_layer(tmp_path, CATALOG, PROGRAM, new)
            replace_layer(tmp_path, CATALOG, PROGRAM, old)
    finally:
        stop.set()
        reader.join()
    assert seen <= {frozenset(old), frozenset(new)}


def test_replace_layer_refuses_the_verify_layer_and_bad_flags(tmp_path: Path) -> None:
    """The verify layer is an overlay's; an unknown variant raises before anything is written."""
    with pytest.raises(FlagStateError):
        replace_layer(tmp_path, CATALOG, VERIFY, {FX: ("on", None)})
    replace_layer(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)})
    with pytest.raises(FlagStateError):
        replace_layer(tmp_path, CATALOG, PROGRAM, {LATENCY: ("warp", None)})
    assert on(tmp_path) == {FX: ("on", None)}


def test_clear_layer_takes_out_only_the_named_flags_or_all(tmp_path: Path) -> None:
    """clear_layer with names removes those from one layer; without, the whole layer."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None), CALLBACK: ("on", None)})
    set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {LATENCY: ("slow", None)})
    assert clear_layer(tmp_path, CATALOG, PROGRAM, [FX, HEAVY]) == [FX]
    assert on(tmp_path) == {CALLBACK: ("on", None), LATENCY: ("slow", None)}
    assert clear_layer(tmp_path, CATALOG, PROGRAM) == [CALLBACK]
    assert on(tmp_path) == {LATENCY: ("slow", None)}
    assert not layer_file(tmp_path, PROGRAM).exists()
    assert clear_layer(tmp_path, CATALOG, PROGRAM) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ledger.nope": ("on", None)}, "unknown flag 'ledger.nope'"),
        ({LATENCY: ("fast", None)}, "choose one of: off, slow, very_slow"),
        ({LATENCY: ("slow", 0)}, "percent must be in"),
        ({LATENCY: ("slow", -5)}, "percent must be in"),
    ],
)
def test_a_bad_flag_variant_or_share_is_refused_and_writes_nothing(
    tmp_path: Path, change: dict[str, tuple[str, float | None]], message: str
) -> None:
    """An unknown flag or variant, or a share out of range, raises and leaves every file as is."""
    set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {FX: ("on", None)})
    files = [state_path(tmp_path), layer_file(tmp_path, INSTRUCTOR)]
    before = [path.read_bytes() for path in files]
    with pytest.raises(FlagStateError, match=message):
        set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, change)
    with pytest.raises(FlagStateError, match=message):
        with verify_overlay(tmp_path, CATALOG, change, by="verify"):
            pass  # pragma: no cover
    assert [path.read_bytes() for path in files] == before
    assert not layer_file(tmp_path, VERIFY).exists()


def test_unknown_layers_and_direct_writes_to_verify_are_refused(tmp_path: Path) -> None:
    """Only the three layers exist, and only the overlay writes verify's."""
    with pytest.raises(FlagStateError, match="layers are: program, instructor, verify"):
        set_layer_flags(tmp_path, CATALOG, "teams", {FX: ("on", None)})
    with pytest.raises(FlagStateError, match="use verify_overlay"):
        set_layer_flags(tmp_path, CATALOG, VERIFY, {FX: ("on", None)})
    with pytest.raises(FlagStateError, match="unknown flag"):
        clear_layer(tmp_path, CATALOG, PROGRAM, ["ledger.nope"])
    assert not state_path(tmp_path).exists()


def test_a_corrupt_layer_counts_as_empty_and_is_kept_aside_by_the_next_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A layer file that is not JSON is logged and ignored (its flags fall back to default);
    another writer still succeeds, and the bad file is kept as .corrupt for inspection."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)})
    layer_file(tmp_path, PROGRAM).write_text('{"flags": {"ledger.fx_conv')
    with caplog.at_level(logging.WARNING, logger="faults"):
        assert live_flags(tmp_path, CATALOG)[FX].layer == UNLAYERED
        set_layer_flags(tmp_path, CATALOG, INSTRUCTOR, {CALLBACK: ("on", None)})
    assert f"{layer_file(tmp_path, PROGRAM)} is unreadable" in caplog.text
    assert on(tmp_path) == {CALLBACK: ("on", None)}
    assert not layer_file(tmp_path, PROGRAM).exists()
    corrupt = tmp_path / "layers" / "program.json.corrupt"
    assert corrupt.read_text() == '{"flags": {"ledger.fx_conv'


def test_a_hand_edited_entry_the_catalog_does_not_know_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry with an unknown flag or variant is logged and skipped; the others apply."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)})
    content = json.loads(layer_file(tmp_path, PROGRAM).read_text())
    content["flags"]["ledger.gone"] = {"variant": "on", "percent": None}
    content["flags"][CALLBACK] = {"variant": "maybe", "percent": None}
    layer_file(tmp_path, PROGRAM).write_text(json.dumps(content))
    with caplog.at_level(logging.WARNING, logger="faults"):
        recompute_document(tmp_path, CATALOG)
    assert on(tmp_path) == {FX: ("on", None)}
    assert "entry 'ledger.gone' skipped" in caplog.text
    assert "entry 'chain.fraud_callback' skipped" in caplog.text


def test_a_state_dir_from_before_layers_keeps_its_flags_as_the_instructors(tmp_path: Path) -> None:
    """A flags.json written before layers existed is carried over as the instructor's layer, so
    the first layered write loses nothing, and `flags reset` then clears it."""
    set_flags(tmp_path, CATALOG, {FX: ("on", None), LATENCY: ("slow", 5)})
    assert live_flags(tmp_path, CATALOG)[LATENCY].layer == INSTRUCTOR
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {CALLBACK: ("on", None)})
    assert on(tmp_path) == {FX: ("on", None), LATENCY: ("slow", 5.0), CALLBACK: ("on", None)}
    migrated = json.loads(layer_file(tmp_path, INSTRUCTOR).read_text())["flags"]
    assert sorted(migrated) == [LATENCY, FX] and migrated[FX]["by"] == "migrated"
    assert clear_layer(tmp_path, CATALOG, INSTRUCTOR) == [LATENCY, FX]
    assert on(tmp_path) == {CALLBACK: ("on", None)}


def test_recompute_writes_defaults_for_a_fresh_lab_and_the_layers_for_a_kept_one(
    tmp_path: Path,
) -> None:
    """A missing flags.json is recreated: all defaults, or what the layers on disk say."""
    recompute_document(tmp_path / "fresh", CATALOG)
    assert json.loads(state_path(tmp_path / "fresh").read_text()) == CATALOG.defaults_document()
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)})
    state_path(tmp_path).unlink()
    recompute_document(tmp_path, CATALOG)
    assert on(tmp_path) == {FX: ("on", None)}


def test_a_direct_write_to_flags_json_shows_as_unlayered(tmp_path: Path) -> None:
    """flags list does not claim a layer for a value no layer set (a hand or set_flags edit)."""
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {FX: ("on", None)})
    set_flags(tmp_path, CATALOG, {CALLBACK: ("on", None)})
    sources = live_flags(tmp_path, CATALOG)
    assert (sources[FX].layer, sources[CALLBACK].layer) == (PROGRAM, UNLAYERED)


def test_concurrent_writers_on_two_layers_lose_nothing(tmp_path: Path) -> None:
    """Program and instructor writers all starting at once, several on one layer: every
    writer's change is in its layer file and in flags.json at the end, round after round."""
    wanted = {key: (list(spec.variants)[-1], None) for key, spec in CATALOG.flags.items()}
    layers = {key: (PROGRAM, INSTRUCTOR)[i % 2] for i, key in enumerate(wanted)}
    failures: list[BaseException] = []

    def write(directory: Path, key: str, start: threading.Barrier) -> None:
        start.wait()
        try:
            set_layer_flags(directory, CATALOG, layers[key], {key: wanted[key]})
        except BaseException as exc:  # reported below: a thread's exception would vanish
            failures.append(exc)

    for round_ in range(10):
        directory = tmp_path / str(round_)
        start = threading.Barrier(len(wanted))
        threads = [threading.Thread(target=write, args=(directory, k, start)) for k in wanted]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert on(directory) == wanted, f"round {round_}"
        for layer in (PROGRAM, INSTRUCTOR):
            content = json.loads(layer_file(directory, layer).read_text())
            assert sorted(content["flags"]) == sorted(k for k in wanted if layers[k] == layer)


@pytest.fixture
def cli_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state dir for CLI flag commands; nothing is started and no port is taken."""
    monkeypatch.setenv("DRILL_STATE_DIR", str(tmp_path))
    yield tmp_path


def flags_cli(*args: str) -> str:
    result = runner.invoke(app, ["flags", *args, "--root", str(REPO_ROOT)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def row(listing: str, key: str) -> str:
    return next(line for line in listing.splitlines() if f" {key} " in line)


def test_cli_set_writes_the_instructor_layer_and_list_shows_each_source(cli_state: Path) -> None:
    """flags set writes the instructor's layer; flags list names the layer of each live value."""
    set_layer_flags(cli_state, CATALOG, PROGRAM, {FX: ("on", None)}, by="program: phase 1")
    flags_cli("set", LATENCY, "slow", "--percent", "5")
    assert json.loads(layer_file(cli_state, INSTRUCTOR).read_text())["flags"][LATENCY]["by"] == (
        INSTRUCTOR
    )
    listing = flags_cli("list")
    assert "program (program: phase 1)" in row(listing, FX)
    assert "slow (1500) for 5%" in row(listing, LATENCY)
    assert " instructor " in row(listing, LATENCY)
    assert " default " in row(listing, CALLBACK)


def test_cli_reset_clears_only_the_instructors_flags_and_all_clears_every_layer(
    cli_state: Path,
) -> None:
    """flags reset leaves the program's flags on and says so; --all turns everything off."""
    set_layer_flags(cli_state, CATALOG, PROGRAM, {FX: ("on", None)})
    flags_cli("set", CALLBACK, "on")
    flags_cli("set", LATENCY, "slow")
    assert "cleared chain.fraud_callback" in flags_cli("reset", CALLBACK)
    assert on(cli_state) == {FX: ("on", None), LATENCY: ("slow", None)}
    output = flags_cli("reset")
    assert "instructor layer: cleared ledger.commit_latency_ms" in output
    assert "ledger.fx_conversion is on: the program layer decides it" in output
    assert on(cli_state) == {FX: ("on", None)}
    output = flags_cli("reset", "--all")
    assert "program layer: cleared ledger.fx_conversion" in output
    assert on(cli_state) == {}


def test_cli_set_during_a_verify_run_says_the_run_holds_the_flag(cli_state: Path) -> None:
    """A flag set while a verify overlay runs is stored, and the instructor is told it waits."""
    with verify_overlay(cli_state, CATALOG, {}, by="verify fp-drift --baseline"):
        output = flags_cli("set", FX, "on")
        assert "ledger.fx_conversion is off: the verify layer decides it" in output
        assert on(cli_state) == {}
    assert on(cli_state) == {FX: ("on", None)}
