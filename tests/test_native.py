"""The native lab's process manager: real uvicorn processes on free ports, SQLite state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drill import native
from drill.lab import model
from drill.native import LabConfig, LabError, ServiceSpec, free_port_offset, port_free

ROOT = Path(__file__).resolve().parents[1]
# These tests manage one service; the lab's other services behave the same way.
LEDGER = ["ledger"]


def ledger_status(config: LabConfig) -> native.ServiceStatus:
    [row] = [row for row in native.status(config) if row.name == "ledger"]
    return row


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabConfig]:
    """A lab on free ports with its state under tmp_path, always torn down."""
    # The developer's shell must not leak Postgres, Redis or an exporter into the children.
    for key in ("DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    # The process manager treats every service alike; the ledger alone keeps these tests fast.
    monkeypatch.setattr(native, "SERVICES", {"ledger": native.SERVICES["ledger"]})
    cfg = LabConfig(root=ROOT, state_dir=tmp_path / "state", port_offset=free_port_offset())
    try:
        yield cfg
    finally:
        native.down(cfg)


def test_up_starts_ledger_and_readyz_answers(config: LabConfig) -> None:
    """up starts ledger, records it, writes lab.json and flags.json, and /readyz answers 200."""
    [row] = native.up(config, only=LEDGER)
    assert (row.name, row.running, row.ready, row.detail) == ("ledger", True, True, "started")
    port = 8001 + config.port_offset
    assert row.url == f"http://127.0.0.1:{port}"
    assert httpx.get(f"{row.url}/readyz", timeout=2).status_code == 200

    record = json.loads((config.state_dir / "run" / "ledger.json").read_text())
    assert record["pid"] == row.pid
    assert record["port"] == port
    assert record["app"] == "services.ledger.app:create_app"
    assert record["root"] == str(ROOT)
    lab = json.loads((config.state_dir / "lab.json").read_text())
    assert lab == {"services": {"ledger": row.url}}
    assert native.endpoints(config)["ledger"] == row.url
    assert (config.state_dir / "flags.json").is_file()
    assert (config.state_dir / "logs" / "ledger.log").is_file()
    # database_url=None means SQLite in the state dir.
    assert (config.state_dir / "ledger.db").is_file()


def test_up_twice_is_a_noop(config: LabConfig) -> None:
    """A second up leaves the running service alone."""
    [first] = native.up(config, only=LEDGER)
    [second] = native.up(config, only=LEDGER)
    assert second.pid == first.pid
    assert second.detail == "already running"
    assert _pid_alive(first.pid or 0)


def test_status_reports_ready(config: LabConfig) -> None:
    """status says not running before up, and running and ready with the pid after."""
    before = ledger_status(config)
    assert (before.running, before.ready, before.pid) == (False, False, None)
    [started] = native.up(config, only=LEDGER)
    after = ledger_status(config)
    assert (after.name, after.running, after.ready) == ("ledger", True, True)
    assert after.pid == started.pid
    assert after.url == started.url


def test_down_stops_it(config: LabConfig) -> None:
    """down stops the process, frees the port and removes the run file and lab.json."""
    [row] = native.up(config, only=LEDGER)
    assert native.down(config) == ["ledger"]
    assert row.pid is not None and not _pid_alive(row.pid)
    assert port_free(8001 + config.port_offset)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{row.url}/readyz", timeout=1)
    assert not (config.state_dir / "run" / "ledger.json").exists()
    assert not (config.state_dir / "lab.json").exists()
    assert native.down(config) == []


def test_restart_gives_new_pid(config: LabConfig) -> None:
    """restart replaces the process with a new, ready one."""
    [before] = native.up(config, only=LEDGER)
    [after] = native.restart(config, ["ledger"])
    assert after.ready and after.pid != before.pid
    assert before.pid is not None and not _pid_alive(before.pid)
    assert httpx.get(f"{after.url}/readyz", timeout=2).status_code == 200


def test_service_that_cannot_start_raises_with_log_tail(
    config: LabConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service whose app cannot load raises LabError naming it, with its log's tail."""
    bogus = ServiceSpec("ledger", "services.nope:create_app", 8001)
    monkeypatch.setattr(native, "SERVICES", {"ledger": bogus})
    with pytest.raises(LabError) as info:
        native.up(config, only=LEDGER, ready_timeout=15)
    message = str(info.value)
    assert "ledger" in message
    assert 'Could not import module "services.nope"' in message
    assert str(config.state_dir / "logs" / "ledger.log") in message
    assert not (config.state_dir / "run" / "ledger.json").exists()
    assert not (config.state_dir / "lab.json").exists()


def write_run_file(config: LabConfig, pid: int) -> Path:
    """A ledger run file as drill up writes it, naming the given pid."""
    path = config.state_dir / "run" / "ledger.json"
    path.parent.mkdir(parents=True)
    record = {
        "pid": pid,
        "port": 8001 + config.port_offset,
        "url": "http://127.0.0.1:1",
        "app": "services.ledger.app:create_app",
        "root": str(ROOT),
        "started_at": "2024-01-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(record))
    return path


def test_down_with_stale_run_file_is_clean(config: LabConfig) -> None:
    """A run file whose pid is dead is removed without stopping anything."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = write_run_file(config, dead.pid).parent
    (config.state_dir / "lab.json").write_text('{"services": {"ledger": "http://127.0.0.1:1"}}')
    row = ledger_status(config)
    assert not row.running and "stale run file" in row.detail
    assert native.down(config) == []
    assert not (run_dir / "ledger.json").exists()
    assert not (config.state_dir / "lab.json").exists()


def test_down_leaves_a_reused_pid_alone(config: LabConfig) -> None:
    """A run file whose pid now belongs to another program does not get that program killed."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        run_dir = write_run_file(config, other.pid).parent
        assert native.down(config) == []
        assert other.poll() is None
        assert not (run_dir / "ledger.json").exists()
    finally:
        other.kill()
        other.wait()


def test_up_refuses_a_port_taken_by_someone_else(config: LabConfig) -> None:
    """A port held by a foreign process gives an actionable LabError and starts nothing."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 8001 + config.port_offset))
        holder.listen()
        with pytest.raises(LabError, match="DRILL_PORT_OFFSET"):
            native.up(config, only=LEDGER)
    assert not (config.state_dir / "run" / "ledger.json").exists()


def _tree_with_ledger(root: Path, readyz_body: str) -> Path:
    """A minimal lab tree whose ledger is a tiny app with the given /readyz body."""
    app_file = root / "services" / "ledger" / "app.py"
    app_file.parent.mkdir(parents=True)
    (app_file.parents[1] / "__init__.py").write_text("")
    (app_file.parent / "__init__.py").write_text("")
    app_file.write_text(
        textwrap.dedent(
            """
            from fastapi import FastAPI, Response

            def create_app() -> FastAPI:
                app = FastAPI()

                @app.get("/readyz")
                def readyz(response: Response) -> dict[str, str]:
            """
        )
        + textwrap.indent(textwrap.dedent(readyz_body), " " * 8)
        + "\n    return app\n"
    )
    return root


def test_app_dir_makes_the_root_tree_win(tmp_path: Path, config: LabConfig) -> None:
    """The services package under config.root is the one served, not the installed one."""
    root = _tree_with_ledger(tmp_path / "copy", 'return {"tree": "copy"}')
    copy = LabConfig(root=root, state_dir=config.state_dir, port_offset=config.port_offset)
    [row] = native.up(copy, only=LEDGER)
    assert httpx.get(f"{row.url}/readyz", timeout=2).json() == {"tree": "copy"}


def test_never_ready_times_out_and_stops_what_it_started(tmp_path: Path, config: LabConfig) -> None:
    """A service stuck at 503 makes up time out with LabError and leaves no process behind."""
    root = _tree_with_ledger(
        tmp_path / "stuck",
        """
        print("still warming up", flush=True)
        response.status_code = 503
        return {"status": "unavailable"}
        """,
    )
    stuck = LabConfig(root=root, state_dir=config.state_dir, port_offset=config.port_offset)
    with pytest.raises(LabError, match=r"ledger did not answer .*/readyz with 200 within 1\.5 s"):
        native.up(stuck, only=LEDGER, ready_timeout=1.5)
    assert not (config.state_dir / "run" / "ledger.json").exists()
    assert port_free(8001 + config.port_offset)


def test_unknown_service_is_a_lab_error(config: LabConfig) -> None:
    """Naming a service that is not in the table says which names exist."""
    with pytest.raises(LabError, match="choose from: ledger"):
        native.up(config, only=["nope"])
    with pytest.raises(LabError, match="unknown service 'nope'"):
        native.restart(config, ["nope"])


def test_chain_group_names_its_three_services() -> None:
    """`chain` on the command line stands for chain-a, chain-b and chain-c, in that order."""
    assert native._select(["chain"]) == ["chain-a", "chain-b", "chain-c"]
    assert native._select(["chain-b", "chain"]) == ["chain-b", "chain-a", "chain-c"]
    spec = native.SERVICES["chain-c"]
    assert (spec.port, spec.env, spec.peers) == (
        8013,
        {"CHAIN_ROLE": "c"},
        {"CHAIN_ORDERS_URL": "chain-a"},
    )


def test_endpoints_default_lab_file_and_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """endpoints uses default ports, then lab.json, then DRILL_<NAME>_URL."""
    monkeypatch.setattr(
        model,
        "SERVICES",
        {
            "ledger": ServiceSpec("ledger", "services.ledger.app:create_app", 8001),
            "chain-a": ServiceSpec(
                "chain-a", "services.chain.app:create_app", 8011, {"CHAIN_ROLE": "a"}
            ),
        },
    )
    monkeypatch.delenv("DRILL_LEDGER_URL", raising=False)
    monkeypatch.delenv("DRILL_CHAIN_A_URL", raising=False)
    lab = LabConfig(root=ROOT, state_dir=tmp_path, port_offset=100)
    assert native.endpoints(lab) == {
        "ledger": "http://127.0.0.1:8101",
        "chain-a": "http://127.0.0.1:8111",
    }
    (tmp_path / "lab.json").write_text('{"services": {"ledger": "http://127.0.0.1:9001"}}')
    assert native.endpoints(lab)["ledger"] == "http://127.0.0.1:9001"
    monkeypatch.setenv("DRILL_CHAIN_A_URL", "http://chain-a:8011/")
    assert native.endpoints(lab)["chain-a"] == "http://chain-a:8011"


def test_from_env_reads_variables_and_finds_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_env finds the lab root upward from cwd and reads the DRILL_* and service variables."""
    lab = tmp_path / "lab"
    (lab / "services").mkdir(parents=True)
    (lab / "scenarios.yaml").write_text("")
    (lab / "docs" / "deep").mkdir(parents=True)
    monkeypatch.chdir(lab / "docs" / "deep")
    for key in ("DRILL_STATE_DIR", "DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("DRILL_PORT_OFFSET", raising=False)
    config = LabConfig.from_env()
    assert config.root == lab.resolve()
    assert config.state_dir == lab.resolve() / ".drill"
    assert (config.port_offset, config.database_url) == (0, None)

    monkeypatch.setenv("DRILL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DATABASE_URL", "postgresql://lab@db/lab")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")
    monkeypatch.setenv("DRILL_PORT_OFFSET", "100")
    config = LabConfig.from_env()
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.port_offset == 100
    assert config.database_url == "postgresql://lab@db/lab"
    assert config.redis_url == "redis://cache:6379/0"
    assert config.otlp_endpoint == "http://jaeger:4318"

    monkeypatch.setenv("DRILL_PORT_OFFSET", "lots")
    with pytest.raises(LabError, match="DRILL_PORT_OFFSET"):
        LabConfig.from_env()
