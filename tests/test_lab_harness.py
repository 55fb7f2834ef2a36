"""The lab harness the tests and benchmarks share: databases, lab environments, running labs."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from drill.lab import harness
from tests.conftest import need_server


def databases() -> set[str]:
    engine = create_engine(harness.sqlalchemy_url(harness.ADMIN_DATABASE_URL))
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def postgres() -> None:
    if not harness.postgres_reachable():
        need_server(f"Postgres at {harness.ADMIN_DATABASE_URL}", "pg_ctlcluster ... main start")


def test_lab_env_names_its_state_ports_and_database_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lab_env points at the lab's state dir and ports, and drops the caller's stray endpoints."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    env = harness.lab_env(tmp_path, redis_url="redis://127.0.0.1:6379/3", port_offset=100)
    assert env["DRILL_STATE_DIR"] == str(tmp_path.resolve() / ".drill")
    assert env["DRILL_PORT_OFFSET"] == "100"
    assert env["REDIS_URL"] == "redis://127.0.0.1:6379/3"
    assert "DATABASE_URL" not in env and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert env["PATH"] == os.environ["PATH"]


def test_temporary_database_is_created_and_dropped(postgres: None) -> None:
    """temporary_database hands out an empty database and drops it after the block."""
    with harness.temporary_database("drill_harness") as url:
        name = url.rsplit("/", 1)[1]
        assert name in databases()
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
    assert name not in databases()


def test_running_lab_starts_a_copy_and_leaves_nothing_behind(postgres: None) -> None:
    """running_lab serves a copied lab on its own ports and database; afterwards the service,
    the copy and the database are gone."""
    with harness.running_lab(only=["ledger"]) as lab:
        assert lab.copy != harness.source_tree()
        assert httpx.get(f"{lab.ledger_url}/readyz", timeout=5).status_code == 200
        assert lab.database_url is not None
        name = lab.database_url.rsplit("/", 1)[1]
        assert name in databases()
        assert lab.env()["DATABASE_URL"] == lab.database_url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{lab.ledger_url}/readyz", timeout=2)
    assert not lab.copy.exists()
    assert name not in databases()
