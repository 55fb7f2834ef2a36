"""Shared fixtures: a throwaway Postgres database per run, and servers a test needs; and the
assertion on an RFC 9457 problem answer the services' tests share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# pytest-xdist's workers run with COLUMNS=80 in their environment. Rich reads COLUMNS once,
# when the CLI's consoles are made at import, and would keep 80 columns for every test; without
# it, a console reads the width each CLI test gives its runner.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

# The slow-machine mode in lanes: with DRILL_PIN_LANES=1, each pytest-xdist worker pins its labs
# and Locust to a CPU of its own (gw0 to CPU 0, gw1 to CPU 1): two one-CPU machines side by
# side, as benchmarks/verdict_stability.py runs its two lanes. Without workers, CPU 0.
if os.environ.get("DRILL_PIN_LANES") == "1":
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    os.environ["DRILL_PIN_CPUS"] = str(int(_worker.removeprefix("gw")) % (os.cpu_count() or 1))


def assert_problem(
    response: httpx.Response, status: int, problem_type: str, title: str, detail: str
) -> None:
    """`response` is an RFC 9457 problem: this status, application/problem+json, and exactly
    this body."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": problem_type,
        "title": title,
        "status": status,
        "detail": detail,
    }


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
