"""The flag catalog, the live state file and flag evaluation through flagd's file resolver."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from faults import (
    CatalogError,
    Flags,
    FlagStateError,
    describe,
    load_catalog,
    read_document,
    reset_flags,
    set_flags,
    state_path,
)

CATALOG = load_catalog()


def wait_for(check: object, timeout: float = 3.0) -> float:
    """Seconds until check() is true; fails after timeout."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():  # type: ignore[operator]
            return time.perf_counter() - started
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def flags(tmp_path: Path):  # type: ignore[no-untyped-def]
    reset_flags(tmp_path, CATALOG)
    client = Flags(state_path(tmp_path), service="test", catalog=CATALOG)
    client.start()
    yield client
    client.close()


def test_catalog_defaults_are_off() -> None:
    """Every flag in the committed catalog defaults to its off value."""
    for spec in CATALOG.flags.values():
        assert spec.default_value in (False, 0, 0.0, ""), spec.key
        assert spec.description


def test_bad_catalog_names_the_flag(tmp_path: Path) -> None:
    """A catalog whose default variant does not exist is rejected with the flag's name."""
    bad = tmp_path / "flags.json"
    bad.write_text(
        json.dumps({"flags": {"x.y": {"variants": {"off": False}, "defaultVariant": "on"}}})
    )
    with pytest.raises(CatalogError, match=r"flags\.x\.y\.defaultVariant"):
        load_catalog(bad)


def test_a_blank_participant_description_is_rejected_with_the_flag(tmp_path: Path) -> None:
    """A participant description that is there must say something; the error names the flag."""
    bad = tmp_path / "flags.json"
    metadata = {"description": "x", "participant_description": "  "}
    flag = {"variants": {"off": False, "on": True}, "defaultVariant": "off", "metadata": metadata}
    bad.write_text(json.dumps({"flags": {"x.y": flag}}))
    with pytest.raises(CatalogError, match=r"flags\.x\.y\.metadata\.participant_description"):
        load_catalog(bad)


def test_participant_descriptions_are_read_and_optional(tmp_path: Path) -> None:
    """The catalog reads a flag's participant description and keeps it in the flag's
    definition; a catalog without them (the participant kit's) loads too."""
    path = tmp_path / "flags.json"
    flag = {"variants": {"off": False, "on": True}, "defaultVariant": "off"}
    told = {"description": "x", "participant_description": "what participants read"}
    flags = {
        "x.told": {**flag, "metadata": told},
        "x.kit": {**flag, "metadata": {"description": "x"}},
    }
    path.write_text(json.dumps({"flags": flags}))
    catalog = load_catalog(path)
    assert catalog["x.told"].participant_description == "what participants read"
    assert catalog["x.told"].definition()["metadata"] == {"service": "", "kind": "trigger", **told}
    assert catalog["x.kit"].participant_description is None
    assert "participant_description" not in catalog["x.kit"].definition()["metadata"]


def test_flip_reaches_the_service(tmp_path: Path, flags: Flags) -> None:
    """Setting a flag in the state file changes the evaluated value without a restart."""
    assert flags.enabled("ledger.fx_conversion") is False
    set_flags(tmp_path, CATALOG, {"ledger.fx_conversion": ("on", None)})
    # How fast (about 0.5 s) is measured by benchmarks/flag_flip.py; a busy CI runner must not
    # turn a slow poll into a failure here.
    wait_for(lambda: flags.enabled("ledger.fx_conversion"), timeout=10)


def test_integer_variants_and_percent_targeting(tmp_path: Path, flags: Flags) -> None:
    """An integer flag served to 30% of targeting keys hits about 30% of them."""
    set_flags(tmp_path, CATALOG, {"ledger.commit_latency_ms": ("slow", 30)})
    wait_for(
        lambda: any(
            flags.integer("ledger.commit_latency_ms", {"targetingKey": str(i)}) for i in range(50)
        )
    )
    values = [
        flags.integer("ledger.commit_latency_ms", {"targetingKey": str(i)}) for i in range(2000)
    ]
    assert set(values) == {0, 1500}
    assert 0.25 < values.count(1500) / len(values) < 0.35
    variant, value, share = describe(
        read_document(state_path(tmp_path), CATALOG)["flags"]["ledger.commit_latency_ms"]
    )
    assert (variant, value, share) == ("slow", 1500, 30.0)


def test_fractional_percent_from_the_cli_is_served(tmp_path: Path, flags: Flags) -> None:
    """A fractional share such as 2.5% is written as integer weights, which flagd honours."""
    set_flags(tmp_path, CATALOG, {"ledger.commit_latency_ms": ("slow", 2.5)})
    keys = [str(i) for i in range(4000)]
    wait_for(
        lambda: any(flags.integer("ledger.commit_latency_ms", {"targetingKey": k}) for k in keys)
    )
    hits = sum(flags.integer("ledger.commit_latency_ms", {"targetingKey": k}) > 0 for k in keys)
    assert 0.015 < hits / len(keys) < 0.035


def test_corrupt_state_keeps_last_good_flags(
    tmp_path: Path, flags: Flags, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt state file leaves the last good values, logs once and counts an error."""
    set_flags(tmp_path, CATALOG, {"ledger.fx_conversion": ("on", None)})
    wait_for(lambda: flags.enabled("ledger.fx_conversion"))
    before = REGISTRY.get_sample_value("drill_flag_state_errors_total", {"service": "test"}) or 0
    with caplog.at_level(logging.INFO, logger="faults"):
        state_path(tmp_path).write_text("{ this is not json")
        wait_for(
            lambda: (
                (
                    REGISTRY.get_sample_value("drill_flag_state_errors_total", {"service": "test"})
                    or 0
                )
                > before
            )
        )
        time.sleep(0.6)  # several polls: still one log line
        assert flags.enabled("ledger.fx_conversion") is True
        assert REGISTRY.get_sample_value("drill_flag_state_ok", {"service": "test"}) == 0
        unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
        assert len(unreadable) == 1
        reset_flags(tmp_path, CATALOG)
        wait_for(lambda: not flags.enabled("ledger.fx_conversion"))
    # The provider serves the new flags before its READY event reaches the handler thread.
    wait_for(lambda: REGISTRY.get_sample_value("drill_flag_state_ok", {"service": "test"}) == 1)
    assert REGISTRY.get_sample_value("drill_flag_state_ok", {"service": "test"}) == 1


def test_missing_state_file_serves_defaults_until_it_appears(tmp_path: Path) -> None:
    """Without a state file every flag is at its default; writing one takes effect."""
    client = Flags(state_path(tmp_path / "absent"), service="test", catalog=CATALOG)
    client.start()
    try:
        assert client.integer("ledger.commit_latency_ms") == 0
        set_flags(tmp_path / "absent", CATALOG, {"ledger.commit_latency_ms": ("very_slow", None)})
        wait_for(lambda: client.integer("ledger.commit_latency_ms") == 4000)
    finally:
        client.close()


def test_override_restores_previous_values(flags: Flags) -> None:
    """flags.override forces values inside the block and restores them after."""
    with flags.override({"ledger.fx_conversion": True}):
        assert flags.enabled("ledger.fx_conversion")
        with flags.override({"ledger.fx_conversion": False}):
            assert not flags.enabled("ledger.fx_conversion")
        assert flags.enabled("ledger.fx_conversion")
    assert not flags.enabled("ledger.fx_conversion")
    with pytest.raises(TypeError):
        with flags.override({"ledger.commit_latency_ms": "slow"}):
            pass


def test_unknown_flag_or_variant_is_refused(tmp_path: Path) -> None:
    """Setting a flag or variant that is not in the catalog fails and writes nothing."""
    reset_flags(tmp_path, CATALOG)
    before = state_path(tmp_path).read_text()
    with pytest.raises(FlagStateError, match="unknown flag"):
        set_flags(tmp_path, CATALOG, {"ledger.nope": ("on", None)})
    with pytest.raises(FlagStateError, match="choose one of: off, slow, very_slow"):
        set_flags(tmp_path, CATALOG, {"ledger.commit_latency_ms": ("fast", None)})
    assert state_path(tmp_path).read_text() == before


def test_state_writes_leave_no_temp_files(tmp_path: Path) -> None:
    """Atomic writes rename a temp file into place and leave nothing behind."""
    for variant in ("on", "off", "on"):
        set_flags(tmp_path, CATALOG, {"ledger.fx_conversion": (variant, None)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".flags.lock", "flags.json"]


def test_flags_stay_readable_by_the_containers_user_under_umask_077(tmp_path: Path) -> None:
    """The compose lab's containers read the state as another user: whatever the umask, a flip
    leaves the state directory enterable and listable by others, and flags.json readable."""
    import os
    import stat

    state = tmp_path / "state"
    old = os.umask(0o077)
    try:
        set_flags(state, CATALOG, {"ledger.fx_conversion": ("on", None)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) & 0o005 == 0o005
    assert stat.S_IMODE(state_path(state).stat().st_mode) & 0o004


def test_an_unknown_injection_point_is_rejected_with_the_flag(tmp_path: Path) -> None:
    """A catalog entry that asks the kit to inject somewhere it cannot is named in the error."""
    bad = tmp_path / "flags.json"
    flag = {
        "variants": {"off": 0, "slow": 100},
        "defaultVariant": "off",
        "metadata": {"description": "x", "injects": "db.vacuum"},
    }
    bad.write_text(json.dumps({"flags": {"x.y": flag}}))
    with pytest.raises(CatalogError, match=r"flags\.x\.y\.metadata\.injects: 'db\.vacuum'"):
        load_catalog(bad)


def test_only_evaluations_that_take_a_triggers_path_are_counted(
    tmp_path: Path, flags: Flags
) -> None:
    """Flags.acted counts a trigger's non-off evaluations per variant, never off ones."""
    for _ in range(3):
        flags.integer("ledger.commit_latency_ms")
    assert flags.acted() == {}
    set_flags(tmp_path, CATALOG, {"ledger.commit_latency_ms": ("slow", None)})
    wait_for(lambda: flags.integer("ledger.commit_latency_ms") == 1500)
    counted = flags.acted()["ledger.commit_latency_ms"]["slow"]
    for _ in range(3):
        flags.integer("ledger.commit_latency_ms")
    assert flags.acted() == {"ledger.commit_latency_ms": {"slow": counted + 3}}
