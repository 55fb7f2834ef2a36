"""fp-drift in both directions, through the real `drill` CLI against a native lab on Postgres.

Shipped code with the triggers on must fail `drill verify`; the reference fix must pass with
the triggers still on; the shipped code with every trigger off must pass (the clean baseline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from drill.native import free_port_offset
from drill.solutions import copy_lab
from tests.conftest import POSTGRES_ADMIN_URL, REPO_ROOT

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# Long enough for well over 1,000 payments at 20 users, short enough for CI.
VERIFY_SECONDS = "25"
DRILL = [sys.executable, "-m", "drill.cli"]


def drill(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRILL, *args, "--root", str(root)],
        env=env, cwd=root, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def _admin(url: str, *statements: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def fresh_database(admin_url: str, name: str) -> str:
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """Start a native lab from a tree (patched or not) with its own database; stop it after."""
    started: list[tuple[Path, dict[str, str]]] = []

    def start(patch: str | None = None, sqlite: bool = False) -> tuple[Path, dict[str, str]]:
        root = copy_lab(REPO_ROOT, tmp_path / f"tree-{len(started)}", solution=patch)
        env = {
            **os.environ,
            "DRILL_STATE_DIR": str(root / ".drill"),
            "DRILL_PORT_OFFSET": str(free_port_offset()),
        }
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        env.pop("DATABASE_URL", None)
        if not sqlite:
            postgres_url = request.getfixturevalue("postgres_url")
            name = f"{postgres_url.rsplit('/', 1)[1]}_{len(started)}"
            env["DATABASE_URL"] = fresh_database(postgres_url, name)
        up = drill(root, env, "up", "--native")
        assert up.returncode == 0, up.stderr + up.stdout
        started.append((root, env))
        return root, env

    yield start
    for root, env in started:
        drill(root, env, "down")
        if "DATABASE_URL" in env:
            name = env["DATABASE_URL"].rsplit("/", 1)[1]
            _admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def verify(root: Path, env: dict[str, str], *extra: str) -> tuple[int, dict]:
    result_path = root / "result.json"
    duration = () if "--duration" in extra else ("--duration", VERIFY_SECONDS)
    done = drill(root, env, "verify", "fp-drift", *duration, "--json", str(result_path), *extra)
    assert done.returncode in (0, 1), done.stderr + done.stdout
    result = json.loads(result_path.read_text())
    assert "drill verify fp-drift" in done.stdout
    return done.returncode, result


def checks(result: dict) -> dict[str, bool]:
    return {check["figure"]: check["passed"] for check in result["checks"]}


def test_shipped_code_with_triggers_fails(lab) -> None:  # type: ignore[no-untyped-def]
    """Shipped ledger + fp-drift triggers: balances drift and retried payments post twice."""
    root, env = lab()
    code, result = verify(root, env)
    assert code == 1
    assert result["figures"]["ledger.payments"] >= 1000
    assert result["figures"]["ledger.balance_drift"] > 0
    assert result["figures"]["ledger.duplicate_postings"] > 0
    assert not checks(result)["ledger.balance_drift"]
    assert not checks(result)["ledger.duplicate_postings"]
    flags = json.loads((root / ".drill" / "flags.json").read_text())["flags"]
    assert flags["ledger.fx_conversion"]["defaultVariant"] == "off", "verify restores the flags"


def test_reference_fix_passes_with_triggers_on(lab) -> None:  # type: ignore[no-untyped-def]
    """solutions/fp-drift.patch applied: every SLA holds with the triggers still on."""
    root, env = lab(patch="fp-drift")
    code, result = verify(root, env)
    assert code == 0, result
    assert result["figures"]["ledger.balance_drift"] == 0
    assert result["figures"]["ledger.duplicate_postings"] == 0
    assert result["figures"]["ledger.payments"] >= 1000


def test_shipped_code_passes_the_clean_baseline(lab) -> None:  # type: ignore[no-untyped-def]
    """Shipped ledger with every trigger off looks healthy: 'fine in staging'."""
    root, env = lab()
    code, result = verify(root, env, "--baseline")
    assert code == 0, result
    assert result["baseline"] is True


def test_sqlite_lab_smoke(lab) -> None:  # type: ignore[no-untyped-def]
    """The default SQLite lab runs a verify end to end and keeps exact balances when clean."""
    root, env = lab(sqlite=True)
    assert (root / ".drill" / "ledger.db").exists()
    code, result = verify(root, env, "--baseline", "--users", "5", "--duration", "8")
    assert code in (0, 1)
    assert result["figures"]["ledger.payments"] > 0
    assert result["figures"]["ledger.balance_drift"] == 0
    assert result["figures"]["ledger.duplicate_postings"] == 0
