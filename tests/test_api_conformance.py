"""schemathesis against every service of a native lab: no 5xx, and every answer as documented.

The lab is the shipped one on Postgres, every trigger off, as a participant starts it. For each
service's `/openapi.json`, schemathesis runs its coverage phase (boundary values of every
parameter, deterministic), its fuzzing phase and its stateful phase, which follows the OpenAPI
links (a posted transaction to its account's postings, an order to its customer check, a
reservation to the order's reservations). The admin routes are fuzzed without the instructor's
token, so they must answer 401 problem details and change nothing.

The six runs go in parallel: each mostly waits on its service. 12 examples per operation (the
fuzzing that found the issue's defects ran 60): the coverage phase already tries every bound
deterministically, and CI runs this file beside other lab tests on two vCPUs (at 25 it took
70 s and slowed its neighbours). The feed gets 5: a valid reader's timeline is the lab's
heaviest request (user 1 follows a thousand accounts). DRILL_FUZZ_SEED explores further.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drill import native
from drill.native import LabConfig, free_port_offset
from tests.conftest import REPO_ROOT
from tests.labs import drop_database, fresh_database

pytestmark = pytest.mark.lab

CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
)
EXAMPLES = {"feed": 5}
DEFAULT_EXAMPLES = 12
# Fixed, so a failure reproduces; DRILL_FUZZ_SEED explores another part of the input space.
SEED = os.environ.get("DRILL_FUZZ_SEED", "20261201")
TIMEOUT_S = 600


@dataclass
class Run:
    service: str
    returncode: int
    output: str
    seconds: float


def schemathesis(url: str, examples: int, workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(examples),
        "--seed", SEED,
        "--workers", "1",
        "--request-timeout", "30",
        # The check is on the API, not on how fast hypothesis makes data on a busy runner.
        "--suppress-health-check", "too_slow",
        "--report", "junit", "--report-dir", str(workdir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[LabConfig]:
    """The whole native lab on free ports and its own Postgres database, stopped afterwards."""
    name = f"{postgres_url.rsplit('/', 1)[1]}_api"
    config = LabConfig(
        root=REPO_ROOT,
        state_dir=tmp_path_factory.mktemp("api-lab"),
        port_offset=free_port_offset(),
        database_url=fresh_database(name),
    )
    try:
        native.up(config, only=list(native.SERVICES))
        yield config
    finally:
        native.down(config)
        drop_database(name)


@pytest.fixture(scope="module")
def runs(lab: LabConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """schemathesis against each service, all at once; each run's exit code and output."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}
    env.pop("CI", None)  # schemathesis' CI mode only changes its output
    began = time.monotonic()
    children = {}
    for service, spec in native.SERVICES.items():
        workdir = tmp_path_factory.mktemp(f"schemathesis-{service}")
        command = schemathesis(lab.url(spec), EXAMPLES.get(service, DEFAULT_EXAMPLES), workdir)
        log = (workdir / "output.txt").open("w+")
        child = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        children[service] = (child, log)
    results = {}
    for service, (child, log) in children.items():
        try:
            returncode = child.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            child.kill()
            returncode = child.wait()
        log.seek(0)
        results[service] = Run(service, returncode, log.read(), time.monotonic() - began)
        log.close()
    return results


@pytest.mark.parametrize("service", list(native.SERVICES))
def test_service_answers_as_its_openapi_says(runs: dict[str, Run], service: str) -> None:
    """No 5xx, and every status, content type and body the service answers is documented."""
    run = runs[service]
    assert run.returncode == 0, f"schemathesis found problems in {service}:\n{run.output[-8000:]}"
    assert "Coverage" in run.output and "Fuzzing" in run.output


@pytest.mark.parametrize("service", ["ledger", "chain-a", "chain-c"])
def test_stateful_phase_follows_the_links(runs: dict[str, Run], service: str) -> None:
    """Where an operation links to another, the stateful phase ran and covered every link."""
    output = runs[service].output
    assert "Stateful" in output
    covered = [line for line in output.splitlines() if "API Links:" in line]
    assert covered, output[-4000:]
    # "API Links:    2 covered / 2 selected / 2 total"
    numbers = [int(part.split()[0]) for part in covered[0].split(":", 1)[1].split("/")]
    assert numbers[0] == numbers[2] > 0, covered[0]
