"""Shared fixtures: a throwaway Postgres database per run, and servers a test needs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "DRILL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def _pin_each_worker() -> None:
    """DRILL_PIN_CPUS=per-worker: each pytest-xdist worker pins its labs to a CPU of its own.

    CI runs the drills' verdicts in two lanes (`-n 2`): worker gwN's labs and Locust on CPU N,
    so each lab still has one CPU, the slow-machine mode, and the two lanes take half the time.
    Without xdist it is CPU 0.
    """
    from drill.machine import PIN_ENV

    if os.environ.get(PIN_ENV) != "per-worker":
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    os.environ[PIN_ENV] = str(index % (os.cpu_count() or 1))


_pin_each_worker()


def need_server(what: str, how_to_start: str) -> None:
    """Fail under CI=true, skip locally: a test without its server proves nothing."""
    message = f"{what} is not reachable; start it with: {how_to_start}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh Postgres database for this test run, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"drill_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        admin.dispose()
        need_server(
            "Postgres at 127.0.0.1:5432",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        )
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop uvicorn serves the lab on."""
    return "asyncio"
