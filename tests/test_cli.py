"""The drill CLI: flags commands, error exits, and the real console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


# Modules `import drill.cli` must not load: each costs a flag flip tenths of a second, and the
# flags commands need none of them (the commands that do import them when they run).
HEAVY_MODULES = (
    "httpx",
    "sqlalchemy",
    "openfeature",
    "opentelemetry",
    "prometheus_client",
    "psutil",
    "yaml",
    "drill.scenarios",
    "drill.agenda",
    "drill.verify",
    "drill.native",
    "drill.compose",
    "drill.collectors",
)


def loaded_heavy_modules(
    code: str, env: dict[str, str] | None = None, heavy: tuple[str, ...] = HEAVY_MODULES
) -> list[str]:
    """The heavy modules (HEAVY_MODULES by default) a fresh interpreter has loaded after running
    code."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in heavy)]


def test_importing_the_cli_loads_no_heavy_module() -> None:
    """`import drill.cli` loads no HTTP client, database, OpenFeature, OpenTelemetry or scenario
    models: `drill flags set` must act at once."""
    assert loaded_heavy_modules("import drill.cli") == []


def test_flags_commands_load_no_heavy_module(tmp_path: Path) -> None:
    """`drill flags set`, `list` and `reset` run on the lab model and the flag files alone."""
    code = (
        "from drill.cli import app\n"
        "for args in (['flags', 'set', 'ledger.fx_conversion', 'on'], ['flags', 'list'],"
        " ['flags', 'reset']):\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
    )
    assert loaded_heavy_modules(code, {"DRILL_STATE_DIR": str(tmp_path)}) == []


def test_flags_set_and_reset_load_neither_rich_nor_pydantic(tmp_path: Path) -> None:
    """The two commands an instructor types in front of the room print plain lines: rich (for
    tables) and pydantic (typer from 0.29 coerces parameters through it) stay unloaded."""
    code = (
        "from drill.cli import app\n"
        "for args in (['flags', 'set', 'ledger.fx_conversion', 'on'], ['flags', 'reset']):\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
    )
    env = {"DRILL_STATE_DIR": str(tmp_path)}
    assert loaded_heavy_modules(code, env, heavy=("rich", "pydantic")) == []


@pytest.mark.parametrize(
    "group", [[], ["flags"], ["solutions"], ["program"], ["program", "teams"], ["pack"]]
)
def test_a_group_without_a_command_shows_its_help(group: list[str]) -> None:
    """`drill`, `drill flags` and every other group given no command print their help."""
    result = runner.invoke(app, group, env={"COLUMNS": "200"})
    assert "Usage:" in result.output
    assert "Commands" in result.output


def test_solutions_is_the_command_and_solution_still_works(state: Path) -> None:
    """`drill solutions apply` is the command; the old `drill solution apply` still runs it,
    hidden from the help."""
    for group in ("solutions", "solution"):
        result = runner.invoke(app, [group, "apply", "nope"], env={"COLUMNS": "200"})
        assert result.exit_code == 2
        assert "no solution 'nope'; known: " in result.output
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    commands = {line.split()[1] for line in listing.splitlines() if line.startswith("│ ")}
    assert "solutions" in commands
    assert "solution" not in commands


@pytest.mark.parametrize("duration", ["90", "60s", "2m", "1.5m"])
def test_verify_duration_reads_the_scenario_files_units(state: Path, duration: str) -> None:
    """--duration takes 60s, 2m and bare seconds as scenarios.yaml does (then, no lab: exit 2)."""
    result = runner.invoke(app, ["verify", "fp-drift", "--duration", duration])
    assert result.exit_code == 2
    assert "drill up --native" in result.output


@pytest.mark.parametrize("duration", ["soon", "0s", "-5", "0.5s"])
def test_verify_refuses_a_bad_duration_by_name(state: Path, duration: str) -> None:
    """A bad --duration is a usage error that names the value."""
    result = runner.invoke(
        app, ["verify", "fp-drift", "--duration", duration], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2
    assert repr(duration) in result.output or "positive" in result.output
    assert "--duration" in result.output


def test_up_without_docker_names_the_native_lab(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drill up` with no Docker engine exits 2 and says to run `drill up --native`."""
    from drill import compose

    monkeypatch.setattr(compose, "engine_available", lambda: False)
    result = runner.invoke(app, ["up"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "drill up --native" in result.output


def test_status_with_an_impossible_port_offset_is_a_clear_error(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DRILL_PORT_OFFSET that puts a service past port 65535 is named, not a traceback."""
    monkeypatch.setenv("DRILL_PORT_OFFSET", "70000")
    result = runner.invoke(app, ["status"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "DRILL_PORT_OFFSET 70000" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("catalog", "place"),
    [
        ('{"flags": {"ledger.x": {"variants": {}}}', ":1:"),
        ('{"flags": {"ledger.x": 1}}', "ledger.x"),
    ],
)
def test_flags_list_with_a_bad_catalog_names_the_file_and_place(
    tmp_path: Path, state: Path, catalog: str, place: str
) -> None:
    """A broken faults/flags.json makes `drill flags list` exit 2 naming the file and the place."""
    root = tmp_path / "lab"
    (root / "faults").mkdir(parents=True)
    (root / "faults" / "flags.json").write_text(catalog)
    result = runner.invoke(app, ["flags", "list", "--root", str(root)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert str(root / "faults" / "flags.json") in result.output
    assert place in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_up_with_docker_starts_the_compose_lab(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drill up` with a Docker engine runs `docker compose up --detach --wait`, with --only
    naming the containers that run those services."""
    from drill import compose

    calls: list[tuple[str, ...]] = []

    def fake_compose(config: object, *args: str, timeout: float = 60.0) -> object:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(compose, "engine_available", lambda: True)
    monkeypatch.setattr(compose, "_compose", fake_compose)
    result = runner.invoke(app, ["up", "--only", "chain-b", "--only", "ledger"])
    assert result.exit_code == 0, result.output
    assert calls == [("up", "--detach", "--wait", "chain", "ledger")]
    assert runner.invoke(app, ["up"]).exit_code == 0
    assert calls[-1] == ("up", "--detach", "--wait")
