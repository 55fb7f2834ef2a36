"""Prometheus: the config and rules pass promtool, every alert has a unit test, and the native
lab runs the same config against its own ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from drill import native, prometheus
from drill.native import SERVICES
from drill.program import api
from drill.program.journal import Journal
from drill.program.team_api import install
from drill.program.teams import Workshop
from drill.scenarios import load_program
from drill.solutions import copy_lab
from tests.conftest import REPO_ROOT, need_server
from tests.labs import lab_env, run_drill
from tests.polling import poll_until

CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
RULES = sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO_ROOT / "prometheus" / "tests").glob("*.yml"))
INSTALL = "apt-get install prometheus (Debian's package ships prometheus and promtool)"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        need_server("promtool", INSTALL)
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_compose_config_and_rules_pass_promtool() -> None:
    checked = promtool("check", "config", str(CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = promtool("check", "rules", *map(str, RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_every_alert_fires_in_its_promtool_unit_test() -> None:
    tested = promtool("test", "rules", *map(str, RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    # An alert counts as tested when some test expects it to fire (non-empty exp_alerts).
    fired = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts, "no alert rules found"
    assert alerts <= fired, f"alerts without a firing unit test: {sorted(alerts - fired)}"


def test_a_broken_rule_test_fails_promtool(tmp_path: Path) -> None:
    """The unit tests can fail: the same input with the wrong expectation is caught."""
    source = REPO_ROOT / "prometheus" / "tests" / "chain_test.yml"
    broken = yaml.safe_load(source.read_text())
    broken["rule_files"] = [str(REPO_ROOT / "prometheus" / "rules" / "chain.yml")]
    for test in broken["tests"]:
        for case in test.get("alert_rule_test", []):
            case["exp_alerts"] = [] if case["exp_alerts"] else [{"exp_labels": {}}]
    path = tmp_path / "broken_test.yml"
    path.write_text(yaml.safe_dump(broken))
    assert promtool("test", "rules", str(path)).returncode != 0


def test_native_config_keeps_jobs_and_rules_and_points_at_native_ports(tmp_path: Path) -> None:
    targets = {name: f"127.0.0.1:{spec.port + 300}" for name, spec in SERVICES.items()}
    targets[prometheus.RUNNER_JOB] = "127.0.0.1:8300"
    destination = tmp_path / "prometheus.yml"
    prometheus.write_native_config(CONFIG, destination, targets, "127.0.0.1:9390")
    compose = yaml.safe_load(CONFIG.read_text())
    native = yaml.safe_load(destination.read_text())
    assert [job["job_name"] for job in native["scrape_configs"]] == [
        job["job_name"] for job in compose["scrape_configs"]
    ]
    scraped = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in native["scrape_configs"]
    }
    assert scraped == {
        **{name: [t] for name, t in targets.items()},
        "prometheus": ["127.0.0.1:9390"],
    }
    assert native["global"] == compose["global"]
    assert sorted(
        Path(p).name
        for pattern in native["rule_files"]
        for p in Path(pattern).parent.glob(Path(pattern).name)
    ) == sorted(p.name for p in RULES)
    checked = promtool("check", "config", str(destination))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_native_config_names_an_unknown_job(tmp_path: Path) -> None:
    source = tmp_path / "prometheus.yml"
    document = yaml.safe_load(CONFIG.read_text())
    document["scrape_configs"].append(
        {"job_name": "billing", "static_configs": [{"targets": ["billing:9"]}]}
    )
    source.write_text(yaml.safe_dump(document))
    with pytest.raises(
        prometheus.PrometheusConfigError, match=r"scrape_configs\[\d+\] job_name 'billing'"
    ):
        targets = {name: f"127.0.0.1:{spec.port}" for name, spec in SERVICES.items()}
        targets[prometheus.RUNNER_JOB] = "127.0.0.1:8000"
        prometheus.native_config(source, targets, "127.0.0.1:9090")


@pytest.mark.lab
def test_native_lab_runs_prometheus_on_the_lab_ports(tmp_path: Path) -> None:
    """`drill up --native` starts Prometheus with the rules; it scrapes; `drill down` stops it."""
    if prometheus.binary() is None:
        need_server("prometheus", INSTALL)
    root = copy_lab(REPO_ROOT, tmp_path / "tree")
    env = lab_env(root)
    offset = int(env["DRILL_PORT_OFFSET"])
    url = f"http://127.0.0.1:{prometheus.PORT + offset}"
    try:
        up = run_drill(root, env, "up", "--native", "--only", "ledger", "--only", "prometheus")
        assert up.returncode == 0, up.stderr + up.stdout
        assert "prometheus" in up.stdout
        with httpx.Client(base_url=url, timeout=5, trust_env=False) as client:
            groups = client.get("/api/v1/rules").json()["data"]["groups"]
            assert {g["name"] for g in groups} >= {"red", "ledger", "chain", "feed"}
            deadline = time.monotonic() + 20
            health: dict[str, str] = {}
            while time.monotonic() < deadline:
                active = client.get("/api/v1/targets").json()["data"]["activeTargets"]
                health = {t["labels"]["job"]: t["health"] for t in active}
                if health.get("ledger") == "up":
                    break
                time.sleep(0.5)
            assert health.get("ledger") == "up", health
            # No runner in this lab: its job is down, and listed.
            assert set(health) == {*SERVICES, "prometheus", prometheus.RUNNER_JOB}
            ledger_port = SERVICES["ledger"].port + offset
            series = client.get("/api/v1/series", params={"match[]": 'up{job="ledger"}'}).json()
            assert series["data"][0]["instance"] == f"127.0.0.1:{ledger_port}"
    finally:
        down = run_drill(root, env, "down")
    assert down.returncode == 0, down.stderr
    assert "prometheus" in down.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/-/ready", timeout=2, trust_env=False)


# -- the workshop runner's job ------------------------------------------------------------------


def test_compose_config_scrapes_the_runner_on_the_host() -> None:
    """prometheus.yml scrapes the runner's /metrics on the host's port 8000, the API's port."""
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert jobs[prometheus.RUNNER_JOB] == [{"targets": [f"host.docker.internal:{api.RUNNER_PORT}"]}]
    assert prometheus.RUNNER_PORT == api.RUNNER_PORT


def test_native_lab_config_scrapes_the_runner_at_its_offset_port(tmp_path: Path) -> None:
    """The config `drill up --native` writes aims the runner job at 127.0.0.1:8000 + offset, and
    promtool accepts it."""
    if prometheus.binary() is None:
        need_server("prometheus", INSTALL)
    config = native.LabConfig(REPO_ROOT, state_dir=tmp_path, port_offset=300)
    native._prometheus_command(config)
    written = yaml.safe_load(native._prometheus_config_file(config).read_text())
    jobs = {job["job_name"]: job["static_configs"] for job in written["scrape_configs"]}
    assert jobs[prometheus.RUNNER_JOB] == [{"targets": [f"127.0.0.1:{api.RUNNER_PORT + 300}"]}]
    assert jobs["ledger"] == [{"targets": [f"127.0.0.1:{SERVICES['ledger'].port + 300}"]}]
    checked = promtool("check", "config", str(native._prometheus_config_file(config)))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_runner_that_is_not_running_pages_nobody() -> None:
    """ServiceDown leaves the runner's job out: between programs it is down by design."""
    red = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / "red.yml").read_text())
    [rule] = [r for g in red["groups"] for r in g["rules"] if r.get("alert") == "ServiceDown"]
    assert rule["expr"].startswith('up{job!~"prometheus|runner"}'), rule["expr"]


def workshop_with_a_day(directory: Path) -> Workshop:
    """Two teams: red found the root cause and verified a fix, blue took a hint."""
    program = load_program(REPO_ROOT / "scenarios.yaml")
    workshop = Workshop(directory, program, Journal(directory / "journal.jsonl"))
    workshop.add_teams(["red", "blue"])
    workshop.note_live(["fp-drift"], 900.0, datetime.now(UTC))
    claim = workshop.file_claim("red", "fp-drift", "floats", [], None, ["fp-drift"], {}, 1500.0)
    workshop.judge(claim.id, "accept", "")
    workshop.unlock_hint("blue", "fp-drift", [])
    checks = [
        {"name": "drift", "figure": "ledger.balance_drift", "kind": "invariant", "value": 0.0,
         "passed": True},
        {"name": "fast", "figure": "p95_ms", "kind": "latency", "value": 140.0, "passed": True},
    ]  # fmt: skip
    workshop.submit_verify("red", {"scenario": "fp-drift", "passed": True, "checks": checks})
    return workshop


# What the runner publishes in the dark room's first phase (drill/program/runner.py snapshot_of).
PHASE_ONE = {
    "running": True,
    "entry": "1: dark room investigation",
    "type": "phase",
    "index": 1,
    "time_left": 2400.0,
    "elapsed": 1200.0,
    "live": ["fp-drift", "n-plus-one"],
    "traffic": [],
    "paused": False,
    "speed": 1.0,
}


def runner_queries(prefix: str = "drill_program_") -> list[tuple[str, str, dict[str, object]]]:
    """(dashboard file, panel title, target) for every panel query on the runner's metrics."""
    found = []
    for path in sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                if prefix in target.get("expr", ""):
                    found.append((path.name, panel["title"], target))
    return found


@pytest.mark.lab
def test_native_prometheus_scrapes_a_running_runner(tmp_path: Path) -> None:
    """Prometheus with the native lab's generated config scrapes a runner's /metrics: the phase
    is queryable, and every dashboard panel on the runner's metrics returns data."""
    executable = prometheus.binary()
    if executable is None:
        need_server("prometheus", INSTALL)
        return
    offset = native.free_port_offset()
    config = native.LabConfig(REPO_ROOT, state_dir=tmp_path, port_offset=offset)
    runner_port = api.RUNNER_PORT + offset
    if not native.port_free(runner_port):
        pytest.skip(f"port {runner_port} is taken")
    board = api.Board()
    board.publish(PHASE_ONE)
    app = api.create_app(board, ("fp-drift", "circular-deadlock", "n-plus-one"))
    install(app, workshop_with_a_day(tmp_path / "workshop"), tmp_path, tmp_path)
    server = api.ApiServer(app, runner_port)
    server.start()
    command = native._prometheus_command(config)
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{prometheus.PORT + offset}"
    try:
        with httpx.Client(base_url=url, timeout=5, trust_env=False) as client:

            def phase_scraped() -> list[dict[str, object]]:
                try:
                    body = client.get(
                        "/api/v1/query", params={"query": "drill_program_phase_info"}
                    ).json()
                except (httpx.HTTPError, ValueError) as exc:  # 503 until it is ready
                    raise AssertionError(f"Prometheus not answering: {exc}") from None
                result: list[dict[str, object]] = body["data"]["result"]
                assert result, "no drill_program_phase_info series yet"
                return result

            [series] = poll_until(phase_scraped, "the runner's phase in Prometheus", 30)
            assert series["metric"] == {
                "__name__": "drill_program_phase_info",
                "job": prometheus.RUNNER_JOB,
                "instance": f"127.0.0.1:{runner_port}",
                "phase": "1: dark room investigation",
                "type": "phase",
                "index": "1",
            }
            queries = runner_queries()
            assert len(queries) >= 5
            empty = []
            for name, title, target in queries:
                body = client.get("/api/v1/query", params={"query": target["expr"]}).json()
                if body["status"] != "success" or not body["data"]["result"]:
                    empty.append(f"{name} › {title}: {target['expr']} → {body}")
            assert not empty, "\n".join(empty)

            def query(expr: str) -> list[dict[str, Any]]:
                result: list[dict[str, Any]] = client.get(
                    "/api/v1/query", params={"query": expr}
                ).json()["data"]["result"]
                return result

            # Reveal mode is off: the count is there, the names are not.
            assert query("drill_program_live_scenario == 1") == []
            [count] = query("drill_program_live_scenarios")
            assert count["value"][1] == "2"
            # The runner's series name no flag or trigger: the dark room stays dark.
            labels = client.get("/api/v1/series", params={"match[]": '{job="runner"}'}).json()[
                "data"
            ]
            assert {k for s in labels for k in s} <= {
                "__name__",
                "job",
                "instance",
                "phase",
                "type",
                "index",
                "scenario",
                "team",
            }
            # Nor do the teams' figures before reveal mode; the Workshop dashboard's per-scenario
            # panels fill once it is on.
            assert query("drill_team_fix_verified") == []
            board.publish({**PHASE_ONE, "reveal": True})

            def revealed() -> None:
                assert query("drill_team_fix_verified"), "no per-scenario team figures yet"

            poll_until(revealed, "the teams' figures after reveal", 30)
            team_queries = runner_queries("drill_team_")
            assert len(team_queries) >= 6
            empty = []
            for name, title, target in team_queries:
                if not query(str(target["expr"])):
                    empty.append(f"{name} › {title}: {target['expr']}")
            assert not empty, "\n".join(empty)
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        server.stop(3)
