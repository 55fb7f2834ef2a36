"""`drill preflight`: each check finds what is really there and says what to do about it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from drill import native, preflight
from tests.conftest import REPO_ROOT


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def config() -> native.LabConfig:
    """This tree on a free range of ports, with its own (empty) state directory."""
    return native.LabConfig(REPO_ROOT, port_offset=native.free_port_offset())


@pytest.fixture
def squatter(config: native.LabConfig) -> Iterator[int]:
    """Something that is not the lab, listening on the ledger's port and never answering."""
    port = config.port(native.SERVICES["ledger"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield port


def test_a_port_held_by_something_else_fails_and_names_the_service(
    config: native.LabConfig, squatter: int
) -> None:
    check = preflight.check_ports(config, compose=False)
    assert check.status == "fail"
    assert f"{squatter} (ledger)" in check.detail
    assert "DRILL_PORT_OFFSET" in check.fix


def test_free_ports_pass(config: native.LabConfig) -> None:
    check = preflight.check_ports(config, compose=False)
    assert check.status == "ok", check


def test_the_compose_lab_also_needs_grafana_jaeger_and_locust_ports() -> None:
    config = native.LabConfig(REPO_ROOT)
    ports = preflight.lab_ports(config, compose=True)
    assert {3000, 16686, 8089, 8001, 9090} <= set(ports)
    assert 3000 not in preflight.lab_ports(config, compose=False)


def test_memory_below_the_lab_s_need_fails_with_the_figures() -> None:
    low = preflight.check_memory(compose=True, available_mib=lambda: 900)
    assert low.status == "fail" and "900 MiB available" in low.detail and "2,048" in low.detail
    assert preflight.check_memory(compose=False, available_mib=lambda: 4096).status == "ok"


def test_an_unreachable_postgres_fails_and_says_how_to_start_it() -> None:
    port = closed_port()
    config = native.LabConfig(
        REPO_ROOT, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/drill"
    )
    check = preflight.check_postgres(config)
    assert check.status == "fail", check
    assert f"127.0.0.1:{port}" in check.detail and "DATABASE_URL" in check.fix


def test_the_machine_s_postgres_answers(postgres_url: str) -> None:
    check = preflight.check_postgres(native.LabConfig(REPO_ROOT, database_url=postgres_url))
    assert check.status == "ok" and check.detail.startswith("Postgres "), check


def test_no_database_url_is_a_warning_not_a_failure() -> None:
    check = preflight.check_postgres(native.LabConfig(REPO_ROOT))
    assert check.status == "warn" and "SQLite" in check.detail


def test_an_unreachable_redis_fails() -> None:
    port = closed_port()
    check = preflight.check_redis(
        native.LabConfig(REPO_ROOT, redis_url=f"redis://127.0.0.1:{port}/0")
    )
    assert check.status == "fail" and f"127.0.0.1:{port}" in check.detail and check.fix


def test_something_that_is_not_redis_fails(squatter: int) -> None:
    """A listener that accepts and says nothing is not Redis (the read times out)."""
    check = preflight.check_redis(
        native.LabConfig(REPO_ROOT, redis_url=f"redis://127.0.0.1:{squatter}/0")
    )
    assert check.status == "fail", check


def test_compose_images_are_read_from_compose_yaml() -> None:
    images = preflight.compose_images(REPO_ROOT)
    assert images["drill-lab:latest"] == "ledger"
    assert {"postgres", "redis", "prometheus", "grafana", "jaeger"} <= set(images.values())


def test_a_failure_before_the_lab_skips_it_and_says_which(config: native.LabConfig) -> None:
    broken = native.LabConfig(
        REPO_ROOT, port_offset=config.port_offset,
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
    )  # fmt: skip
    checks = list(preflight.run(broken, preflight.Options(native_only=True)))
    assert [c.name for c in checks] == ["python", "ports", "memory", "postgres", "redis", "lab"]
    assert checks[-1].status == "skip" and "redis" in checks[-1].detail
    assert not preflight.passed(checks)


def test_the_cli_prints_json_and_exits_1_on_a_failure(config: native.LabConfig) -> None:
    from typer.testing import CliRunner

    from drill.cli import app

    env = {
        "DRILL_PORT_OFFSET": str(config.port_offset),
        "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "DATABASE_URL": "",
    }
    result = CliRunner().invoke(
        app, ["preflight", "--native", "--no-lab", "--json", "--root", str(REPO_ROOT)], env=env
    )
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    assert {row["name"]: row["status"] for row in rows}["redis"] == "fail"


@pytest.mark.lab
@pytest.mark.drill
def test_preflight_brings_up_a_native_lab_and_verifies_each_baseline(
    tmp_path: Path, postgres_url: str
) -> None:
    """The whole evening-before check on a real native lab: up, three 20 s baselines, down."""
    from drill.solutions import copy_lab
    from tests.labs import drop_database, fresh_database, lab_env, run_drill

    root = copy_lab(REPO_ROOT, tmp_path / "lab")
    name = f"{postgres_url.rsplit('/', 1)[1]}_preflight"
    env = lab_env(root, database_url=fresh_database(name))
    try:
        done = run_drill(root, env, "preflight", "--native", "--json", timeout=900)
        rows = {row["name"]: row for row in json.loads(done.stdout)}
        assert done.returncode == 0, done.stdout + done.stderr
        assert rows["lab"]["status"] == "ok" and "started for this check" in rows["lab"]["detail"]
        for scenario in ("fp-drift", "circular-deadlock", "n-plus-one"):
            assert rows[f"verify {scenario}"]["status"] == "ok", rows[f"verify {scenario}"]
        status = run_drill(root, env, "status")
        assert "not running" in status.stdout, "preflight must leave the lab as it found it"
    finally:
        run_drill(root, env, "down")
        drop_database(name)
