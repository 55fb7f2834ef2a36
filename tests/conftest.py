"""Shared fixtures: a throwaway Postgres database per run, and servers a test needs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# pytest-xdist's workers run with COLUMNS=80 in their environment. Rich reads COLUMNS once,
# when the CLI's consoles are made at import, and would keep 80 columns for every test; without
# it, a console reads the width each CLI test gives its runner.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)


def need_server(what: str, how_to_start: str) -> None:
    """Fail under CI=true, skip locally: a test without its server proves nothing."""
    message = f"{what} is not reachable; start it with: {how_to_start}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh Postgres database for this test run, dropped afterwards."""
    from drill.lab import harness

    if not harness.postgres_reachable():
        need_server(
            f"Postgres at {harness.ADMIN_DATABASE_URL}",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        )
    with harness.temporary_database("drill_test") as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop uvicorn serves the lab on."""
    return "asyncio"
