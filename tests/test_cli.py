"""The drill CLI: flags commands, error exits, and the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drill.cli import app
from drill.native import free_port_offset
from tests.conftest import REPO_ROOT

runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRILL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DRILL_PORT_OFFSET", str(free_port_offset()))
    return tmp_path


def live(state: Path, flag: str) -> dict:
    return json.loads((state / "flags.json").read_text())["flags"][flag]


def test_flags_set_list_and_reset(state: Path) -> None:
    """flags set writes the state file, flags list shows it, flags reset turns it off."""
    result = runner.invoke(
        app, ["flags", "set", "ledger.commit_latency_ms", "slow", "--percent", "5"]
    )
    assert result.exit_code == 0, result.output
    assert live(state, "ledger.commit_latency_ms")["targeting"]["fractional"][0] == ["slow", 500]
    listing = runner.invoke(app, ["flags", "list"], env={"COLUMNS": "250"})
    assert "slow (1500) for 5%" in listing.output
    assert runner.invoke(app, ["flags", "reset"]).exit_code == 0
    assert "targeting" not in live(state, "ledger.commit_latency_ms")


def test_unknown_flag_or_variant_exits_2_with_the_reason(state: Path) -> None:
    """A typo in a flag or variant is a clear error (exit 2), not a traceback."""
    result = runner.invoke(app, ["flags", "set", "ledger.fx", "on"])
    assert result.exit_code == 2
    assert "unknown flag 'ledger.fx'" in result.output
    result = runner.invoke(
        app, ["flags", "set", "ledger.fx_conversion", "maybe"], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2
    assert "choose one of: off, on" in result.output
    result = runner.invoke(app, ["flags", "set", "ledger.fx_conversion", "on", "--percent", "0"])
    assert result.exit_code == 2


def test_verify_without_a_lab_exits_2_and_says_what_to_start(state: Path) -> None:
    """drill verify against a lab that is not running exits 2 and names drill up."""
    result = runner.invoke(app, ["verify", "fp-drift", "--duration", "1"])
    assert result.exit_code == 2
    assert "drill up --native" in result.output
    assert not (state / "flags.json").exists(), "nothing was flipped"


def test_verify_unknown_scenario_exits_2(state: Path) -> None:
    """An unknown scenario name lists the known ones."""
    result = runner.invoke(app, ["verify", "fp-drfit"])
    assert result.exit_code == 2
    assert "known: " in result.output and "fp-drift" in result.output


def test_bad_scenarios_file_is_reported_with_its_line(tmp_path: Path, state: Path) -> None:
    """drill scenarios names the file, line and field of a mistake."""
    root = tmp_path / "lab"
    root.mkdir()
    (root / "services").mkdir()
    text = (REPO_ROOT / "scenarios.yaml").read_text().replace("users: 20", "users: -3")
    (root / "scenarios.yaml").write_text(text)
    result = runner.invoke(app, ["scenarios", "--root", str(root)], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "load.users: Input should be greater than or equal to 1" in result.output
    assert f"scenarios.yaml:{text.splitlines().index('      users: -3') + 1}:" in result.output


def test_bad_port_offset_is_a_clear_error(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-numeric DRILL_PORT_OFFSET is reported, not raised."""
    monkeypatch.setenv("DRILL_PORT_OFFSET", "lots")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "DRILL_PORT_OFFSET" in result.output


def test_console_script_is_installed(state: Path) -> None:
    """The `drill` console script runs and lists the scenarios."""
    drill = shutil.which("drill") or str(Path(REPO_ROOT / ".venv/bin/drill"))
    done = subprocess.run(
        [drill, "scenarios"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": str(Path(drill).parent), "DRILL_STATE_DIR": str(state), "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fp-drift" in done.stdout
