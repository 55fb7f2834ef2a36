"""Grafana: provisioning and dashboards agree with each other, the dark room stays dark, and every
panel's query returns data from a real Prometheus scraping the real lab under each drill's load.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from drill import prometheus
from drill.native import GROUPS, SERVICES
from drill.program.annotations import TAGS as ANNOTATION_TAGS
from drill.solutions import apply, copy_lab
from tests.conftest import REPO_ROOT, need_server
from tests.labs import drop_database, fresh_database, lab_env, run_drill, verify

GRAFANA = REPO_ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
INSTALL = "apt-get install prometheus (Debian's package ships prometheus and promtool)"

# Other dashboards, the runner and the docs link to these: renaming one breaks a link.
UIDS = {"lab-overview", "ledger", "chain", "feed", "drill-kpis", "workshop"}
SCHEMA_VERSION = 41  # Grafana 11.6 (the compose image) and 12.0; later versions migrate it.
TAG = "drill-lab"

# The dark room stays dark: what participants read names symptoms, never a fault, its cause or
# the lab's machinery. Metric names inside queries are fine; they are not read as prose.
FORBIDDEN_WORDS = (
    "deadlock",
    "drift",
    "float",
    "double post",
    "double-post",
    "duplicate",
    "n+1",
    "n + 1",
    "n plus one",
    "n-plus-one",
    "circular",
    "cycle",
    "callback",
    "fraud",
    "blocking",
    "retry",
    "retries",
    "rounding",
    "fault",
    "trigger",
    "inject",
)

# Metrics that only the reference fixes export, and the patch that adds each. A query on one of
# them is evaluated against a lab with both patches applied; every other query against the code
# as shipped. Keep this set small: a panel that needs a fix to show anything is a hint.
FIX_ONLY_METRICS = {
    "chain_breaker_state": "circular-deadlock",
    "cache_lookups_total": "n-plus-one",
}

# The workshop runner's metrics (drill/program/api.py). The native labs here run no runner, so
# these panels show "no program running"; tests/test_prometheus.py checks every query on them
# against a Prometheus scraping a real runner's /metrics.
RUNNER_METRICS = re.compile(r"\bdrill_(program|team)_\w+")

# Grafana's built-in annotations datasource, and the tags the runner puts on its annotations
# (drill/program/annotations.py: TAGS, plus "phase" on regions and "flag" on flag changes).
BUILTIN_ANNOTATIONS = {"type": "grafana", "uid": "-- Grafana --"}
PHASE_TAGS = [*ANNOTATION_TAGS, "phase"]
FLAG_TAGS = [*ANNOTATION_TAGS, "flag"]

# Fields Grafana's node graph reads from a frame, by field *name* (a rename transformation only
# sets the display name, which the panel ignores).
NODE_GRAPH_FIELD = re.compile(r"^(mainstat|secondarystat|arc__\w+|detail__\w+|color|subtitle)$")


def load_dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text())) for path in DASHBOARD_FILES]


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def all_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, t) for panel in all_panels(dashboard) for t in panel.get("targets", [])]


def every_query() -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(file name, dashboard, panel, target) for every target of every dashboard."""
    return [
        (name, dashboard, panel, t)
        for name, dashboard in load_dashboards()
        for panel, t in all_targets(dashboard)
    ]


def provisioned_datasources() -> dict[str, str]:
    """uid → type of every datasource Grafana provisions."""
    document = yaml.safe_load(DATASOURCES.read_text())
    return {source["uid"]: source["type"] for source in document["datasources"]}


def words_participants_read(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, text) for every string a participant reads on the dashboard."""
    texts = [("dashboard title", dashboard.get("title", ""))]
    texts.append(("dashboard description", dashboard.get("description", "")))
    texts += [("link", link.get("title", "")) for link in dashboard.get("links", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        texts.append(("variable label", variable.get("label", "")))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        texts.append(("annotation", annotation.get("name", "")))
    for panel in all_panels(dashboard):
        where = f"panel {panel.get('title')!r}"
        texts.append((where, panel.get("title", "")))
        texts.append((f"{where} description", panel.get("description", "")))
        texts.append((f"{where} text", panel.get("options", {}).get("content", "")))
        for t in panel.get("targets", []):
            texts.append((f"{where} legend", t.get("legendFormat", "")))
        for transformation in panel.get("transformations", []):
            renamed = transformation.get("options", {}).get("renameByName", {})
            texts += [(f"{where} column", name) for name in renamed.values()]
        config = panel.get("fieldConfig", {})
        for mapping in config.get("defaults", {}).get("mappings", []):
            texts += [(f"{where} value", o.get("text", "")) for o in mapping["options"].values()]
        for override in config.get("overrides", []):
            for prop in override.get("properties", []):
                if prop["id"] == "displayName":
                    texts.append((f"{where} series", prop["value"]))
    return texts


def dark_room_violations(dashboard: dict[str, Any]) -> list[str]:
    return [
        f"{where}: {text!r} says {word!r}"
        for where, text in words_participants_read(dashboard)
        for word in FORBIDDEN_WORDS
        if word in text.lower()
    ]


# How Grafana expands its variables, for a test that sends the queries itself. $__rate_interval
# becomes the recording rules' 1m window (Grafana's own value for the default 15-minute view is
# 20 s, four 5 s scrapes); template variables take their "All" value.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "5s", "__range": "15m"}
VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]")


def expand(expr: str, dashboard: dict[str, Any]) -> str:
    """The expression with every variable replaced; an unknown variable is an error."""
    values = dict(GRAFANA_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        values[variable["name"]] = variable.get("allValue") or ".*"

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise AssertionError(f"{expr!r} uses ${name}, which the dashboard does not define")
        return values[name]

    return VARIABLE.sub(value, expr)


def metrics_in(expr: str) -> set[str]:
    return {name for name in FIX_ONLY_METRICS if re.search(rf"\b{name}\b", expr)}


# ------------------------------------------------------------------------------------------------
# Static checks: fast, no servers.
# ------------------------------------------------------------------------------------------------


def test_dashboards_parse_with_their_stable_unique_uids() -> None:
    """Every dashboard file is JSON, and the uids are exactly the six the lab links to."""
    uids = [dashboard["uid"] for _, dashboard in load_dashboards()]
    assert len(uids) == len(set(uids)), uids
    assert set(uids) == UIDS


def test_dashboards_share_the_lab_defaults() -> None:
    """Current schema, 5 s refresh, last 15 minutes, read-only, tagged and linked to the others."""
    for name, dashboard in load_dashboards():
        assert dashboard["schemaVersion"] == SCHEMA_VERSION, name
        assert dashboard["refresh"] == "5s", name
        assert dashboard["time"] == {"from": "now-15m", "to": "now"}, name
        assert dashboard["editable"] is False, name
        assert TAG in dashboard["tags"], name
        links = [link for link in dashboard["links"] if link["type"] == "dashboards"]
        assert any(TAG in link["tags"] and link["keepTime"] for link in links), name
        assert dashboard["title"], name


def test_every_panel_has_a_title_an_id_and_a_place() -> None:
    """Panels have titles (rows too), ids unique in their dashboard, and sit inside 24 columns."""
    for name, dashboard in load_dashboards():
        ids = [panel["id"] for panel in all_panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in all_panels(dashboard):
            assert panel.get("title", "").strip(), f"{name}: panel {panel['id']} has no title"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']} is wider than the grid"


def test_every_target_queries_a_provisioned_prometheus() -> None:
    """Each target names, by uid, a Prometheus datasource that datasources.yml provisions."""
    provisioned = provisioned_datasources()
    for name, dashboard in load_dashboards():
        targets = all_targets(dashboard)
        assert targets, name
        for panel, t in targets:
            for source in (panel["datasource"], t["datasource"]):
                assert source["type"] == "prometheus", f"{name}: {panel['title']}"
                assert provisioned.get(source["uid"]) == "prometheus", f"{name}: {panel['title']}"
            assert t["expr"].strip(), f"{name}: {panel['title']} {t['refId']} is empty"
        refs = [(panel["id"], t["refId"]) for panel, t in targets]
        assert len(refs) == len(set(refs)), f"{name}: a panel repeats a refId"


def test_datasources_link_exemplars_to_their_traces() -> None:
    """Prometheus and Jaeger have fixed uids; an exemplar's trace_id opens its trace in Jaeger."""
    document = yaml.safe_load(DATASOURCES.read_text())
    sources = {source["uid"]: source for source in document["datasources"]}
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["jaeger"]["type"] == "jaeger"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    destinations = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "jaeger"}.items() <= destinations[0].items()
    # The services label their exemplars trace_id (services/kit/metrics.py, services/kit/http.py).
    for module in ("metrics.py", "http.py"):
        assert '"trace_id"' in (REPO_ROOT / "services" / "kit" / module).read_text()


def test_dashboard_provider_serves_the_mounted_folder_read_only() -> None:
    """One file provider reads /var/lib/grafana/dashboards into a folder; the UI cannot edit."""
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert provider["folder"]
    assert provider["allowUiUpdates"] is False


def test_latency_panels_show_exemplars() -> None:
    """Every time series on a request-duration histogram asks for exemplars (trace links)."""
    checked = 0
    for name, dashboard in load_dashboards():
        for panel, t in all_targets(dashboard):
            if panel["type"] == "timeseries" and "_request_duration_seconds_bucket" in t["expr"]:
                assert t["exemplar"] is True, f"{name}: {panel['title']} {t['refId']}"
                checked += 1
    assert checked >= 10


def test_the_dark_room_stays_dark() -> None:
    """No title, description, legend, column or value text names a fault or its cause."""
    assert dark_room_violations({"title": "Chain", "panels": [{"title": "Deadlock detector"}]})
    violations = [v for _, dashboard in load_dashboards() for v in dark_room_violations(dashboard)]
    assert not violations, "\n".join(violations)


def test_every_expression_parses() -> None:
    """promtool parses every query, as a recording rule, after Grafana's variables expand."""
    if shutil.which("promtool") is None:
        need_server("promtool", INSTALL)
    rules = [
        {"record": f"dashboard_query_{index}", "expr": expand(t["expr"], dashboard)}
        for index, (_, dashboard, _, t) in enumerate(every_query())
    ]
    document = {"groups": [{"name": "dashboards", "rules": rules}]}
    checked = subprocess.run(
        ["promtool", "check", "rules", "/dev/stdin"],
        input=yaml.safe_dump(document),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_service_map_fields_are_named_for_the_node_graph() -> None:
    """The node graph's queries are instant tables whose values become node graph fields by name.

    Grafana tells node frames from edge frames by a `source` field and reads `id`, `title`,
    `mainstat`... by field name; the labels come from label_replace/label_join, the values from
    calculateField (whose alias is a real field name), one per query.
    """
    (overview,) = [d for _, d in load_dashboards() if d["uid"] == "lab-overview"]
    (service_map,) = [p for p in all_panels(overview) if p["type"] == "nodeGraph"]
    aliases = {
        step["filter"]["options"]: step["options"]["alias"]
        for step in service_map["transformations"]
        if step["id"] == "calculateField"
    }
    for t in service_map["targets"]:
        assert t["instant"] and t["format"] == "table", t["refId"]
        assert NODE_GRAPH_FIELD.match(aliases[t["refId"]]), (t["refId"], aliases[t["refId"]])
        labels = ("id", "title") if t["refId"].startswith("nodes") else ("id", "source", "target")
        for label in labels:
            assert f'"{label}"' in t["expr"], (t["refId"], label)
    assert {"nodes", "edges"} <= {t["refId"] for t in service_map["targets"]}
    assert aliases["nodes"] == aliases["edges"] == "mainstat"


def test_fix_only_metrics_come_from_their_patches_and_are_used() -> None:
    """Each fix-only metric is added by its reference patch and read by some panel."""
    queried = " ".join(t["expr"] for _, _, _, t in every_query())
    for metric, patch in FIX_ONLY_METRICS.items():
        base = metric.removesuffix("_total")
        assert f'"{base}"' in (REPO_ROOT / "solutions" / f"{patch}.patch").read_text(), metric
        assert re.search(rf"\b{metric}\b", queried), f"no panel reads {metric}"


def annotation_queries(dashboard: dict[str, Any], tags: list[str]) -> list[dict[str, Any]]:
    """The dashboard's annotation queries on Grafana's own store filtered by exactly these tags."""
    return [
        a
        for a in dashboard.get("annotations", {}).get("list", [])
        if a.get("datasource") == BUILTIN_ANNOTATIONS
        and a.get("target", {}).get("type") == "tags"
        and sorted(a["target"].get("tags", [])) == sorted(tags)
    ]


def test_workshop_phases_are_shaded_on_every_dashboard() -> None:
    """Every dashboard shows the runner's phase regions: a tags query on Grafana's annotations,
    on and visible, that matches all of the runner's phase tags."""
    for name, dashboard in load_dashboards():
        queries = annotation_queries(dashboard, PHASE_TAGS)
        assert len(queries) == 1, f"{name}: no annotation query on tags {PHASE_TAGS}"
        (query,) = queries
        assert query["enable"] is True and query["hide"] is False, name
        # matchAny false: an annotation must carry every tag, so flag points stay out.
        assert query["target"]["matchAny"] is False, name
        assert query["target"]["limit"] >= 20, name  # a workshop has 8 entries; reruns add more


def test_flag_changes_stay_off_the_dashboards_while_the_room_is_dark() -> None:
    """The runner's flag-change annotations name the flag, so their query is off and hidden: no
    participant can switch it on; an instructor enables it in the settings for the debrief."""
    for name, dashboard in load_dashboards():
        for query in annotation_queries(dashboard, FLAG_TAGS):
            assert query["enable"] is False and query["hide"] is True, name
        for query in dashboard["annotations"]["list"]:
            tags = query.get("target", {}).get("tags", [])
            shown = query.get("enable") and query["target"].get("type") == "tags"
            assert not (shown and "flag" in tags), f"{name}: {query['name']} shows flag changes"
            assert not (shown and query["target"].get("matchAny")), f"{name}: {query['name']}"


def panel_titled(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in all_panels(dashboard) if p["title"] == title]
    return panel


def test_lab_overview_shows_the_workshop_program() -> None:
    """The lab overview opens on the runner's program: phase, time left, live scenarios, clock."""
    (overview,) = [d for _, d in load_dashboards() if d["uid"] == "lab-overview"]
    exprs = {
        title: [t["expr"] for t in panel_titled(overview, title)["targets"]]
        for title in (
            "Phase",
            "Time left in this phase",
            "Live scenarios",
            "Program clock",
            "Clock speed",
        )
    }
    assert exprs["Phase"] == ["drill_program_phase_info"]
    phase = panel_titled(overview, "Phase")
    assert phase["targets"][0]["legendFormat"] == "{{phase}}"
    assert phase["options"]["textMode"] == "name"  # the phase's name, not the info's value 1
    assert exprs["Time left in this phase"] == ["drill_program_seconds_left"]
    assert exprs["Program clock"] == ["drill_program_paused"]
    assert exprs["Clock speed"] == ["drill_program_speed"]
    assert all(e.startswith("drill_program_live_scenario{") for e in exprs["Live scenarios"])
    # The top row: what an instructor reads first.
    assert phase["gridPos"]["y"] <= 1
    for title in exprs:
        assert panel_titled(overview, title)["targets"][0]["instant"] is True, title


def test_live_scenarios_are_named_by_their_titles_not_their_ids() -> None:
    """One query per scenario in scenarios.yaml, its legend the scenario's title: ids such as
    the one for the ledger's scenario name the defect, titles name the symptom."""
    scenarios = yaml.safe_load((REPO_ROOT / "scenarios.yaml").read_text())["scenarios"]
    (overview,) = [d for _, d in load_dashboards() if d["uid"] == "lab-overview"]
    targets = panel_titled(overview, "Live scenarios")["targets"]
    legends = {}
    for t in targets:
        match = re.fullmatch(r'drill_program_live_scenario\{scenario="([\w-]+)"\}', t["expr"])
        assert match, t["expr"]
        legends[match[1]] = t["legendFormat"]
    assert legends == {name: s["title"] for name, s in scenarios.items()}


def test_the_runner_is_not_a_service_on_any_panel() -> None:
    """A query on `up` leaves the runner's job out: between programs it is down by design."""
    checked = 0
    for name, _, panel, t in every_query():
        for selector in re.findall(r"\bup\{([^}]*)\}", t["expr"]):
            assert re.search(r'job!~"[^"]*\brunner\b', selector), f"{name}: {panel['title']}"
            checked += 1
    assert checked >= 5


# ------------------------------------------------------------------------------------------------
# The live check: every panel's query returns data from the real lab.
# ------------------------------------------------------------------------------------------------

# Brief load through each drill with its triggers on (`drill verify` sets them for the run), so
# panels that only show something while a fault is live are exercised with it live. The shipped
# code fails its SLAs (exit 1); that is the point here, not a finding.
SHIPPED_LOAD = (
    ("fp-drift", "--duration", "10"),
    # Three readers: each timeline holds the feed's event loop for a second or more, and with
    # the scenario's 50 every scrape of the feed times out (4 s) while the storm lasts:
    # Prometheus records a gap (up 0), not the storm. On a busy machine even three readers
    # blocked every scrape until the storm ended, so the timeline series first appeared with
    # its final count and rate() saw no increase (NaN only): timelines flow with the triggers
    # off first, as for the chain below.
    ("n-plus-one", "--baseline", "--duration", "14", "--users", "3"),
    ("n-plus-one", "--duration", "20", "--users", "3"),
    # The chain's order latency panels read rate()[1m] over completed orders, and with its
    # triggers on the chain may stick before the first scrape has seen one (CI: NaN only). So
    # orders flow with the triggers off first, then the cycle closes; last, so its stuck pools
    # cannot hold up the other loads.
    ("circular-deadlock", "--baseline", "--duration", "12"),
    ("circular-deadlock", "--duration", "10"),
)
# Longer than the scenario's 12 s warm-up, or verify has nothing to judge and refuses to run.
FIXED_LOAD = (("n-plus-one", "--duration", "16", "--users", "10"),)
FIXED_SERVICES = ("chain", "feed", "profiles")
SCRAPE_INTERVAL_S = 5


@dataclass
class Lab:
    """A native lab under root, with its own ports, database and Prometheus."""

    name: str
    root: Path
    env: dict[str, str]
    services: tuple[str, ...]

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{prometheus.PORT + int(self.env['DRILL_PORT_OFFSET'])}"


@dataclass
class Labs:
    shipped: Lab
    fixed: Lab
    started: float
    checked_at: float


def up_lab(lab: Lab, only: tuple[str, ...]) -> None:
    args = [arg for name in (*only, "prometheus") for arg in ("--only", name)] if only else []
    done = run_drill(lab.root, lab.env, "up", "--native", *args)
    assert done.returncode == 0, done.stderr + done.stdout


def drive(lab: Lab, loads: tuple[tuple[str, ...], ...]) -> None:
    for scenario, *args in loads:
        verify(lab.root, lab.env, scenario, *args)


def _seconds(stamp: str) -> float:
    # Prometheus writes nanoseconds; fromisoformat takes at most microseconds.
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", stamp)).timestamp()


def wait_for_fresh_data(lab: Lab, since: float, timeout: float = 45) -> None:
    """Until every service of the lab was scraped twice, and every rule evaluated, after since."""
    jobs = {member for name in lab.services for member in GROUPS.get(name, (name,))}
    deadline = time.monotonic() + timeout
    stale: list[str] = []
    with httpx.Client(base_url=lab.prometheus_url, timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            targets = client.get("/api/v1/targets").json()["data"]["activeTargets"]
            groups = client.get("/api/v1/rules").json()["data"]["groups"]
            fresh = since + 2 * SCRAPE_INTERVAL_S
            stale = [
                t["labels"]["job"]
                for t in targets
                if t["labels"]["job"] in jobs
                and (t["health"] != "up" or _seconds(t["lastScrape"]) < fresh)
            ]
            stale += [g["name"] for g in groups if _seconds(g["lastEvaluation"]) < fresh]
            if not stale:
                return
            time.sleep(1)
    raise AssertionError(f"{lab.name}: no fresh scrape or rule evaluation for {stale}")


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Labs]:
    """The shipped lab and a lab with both fixes, each with Prometheus, after brief load."""
    if prometheus.binary() is None:
        need_server("prometheus (the native lab's metrics store)", INSTALL)
    tmp = tmp_path_factory.mktemp("dashboards")
    base = postgres_url.rsplit("/", 1)[1]
    started: list[Lab] = []

    def make(name: str, patches: tuple[str, ...], services: tuple[str, ...]) -> Lab:
        root = copy_lab(REPO_ROOT, tmp / name)
        for patch in patches:
            apply(root, patch)
        database = fresh_database(f"{base}_dash_{name}")
        lab = Lab(name, root, lab_env(root, database_url=database), services)
        started.append(lab)
        return lab

    def fixed_lab() -> Lab:
        # Its ports are chosen after the shipped lab holds its own, so the two cannot collide.
        lab = make("fixed", tuple(FIX_ONLY_METRICS.values()), FIXED_SERVICES)
        up_lab(lab, FIXED_SERVICES)
        drive(lab, FIXED_LOAD)
        return lab

    try:
        shipped = make("shipped", (), tuple(SERVICES))
        begun = time.time()
        up_lab(shipped, ())
        with ThreadPoolExecutor(max_workers=1) as pool:
            fixed_future = pool.submit(fixed_lab)
            drive(shipped, SHIPPED_LOAD)
            fixed = fixed_future.result()
        loaded = time.time()
        for lab in (shipped, fixed):
            wait_for_fresh_data(lab, loaded)
        yield Labs(shipped, fixed, begun, time.time())
    finally:
        for lab in started:
            run_drill(lab.root, lab.env, "down")
            drop_database(lab.env["DATABASE_URL"].rsplit("/", 1)[1])


@dataclass
class Answer:
    """What Prometheus returned for one query: its series' labels and values, or an error."""

    error: str | None = None
    series: list[tuple[dict[str, str], list[float]]] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        if self.error:
            return self.error
        if not self.series:
            return "no series"
        if not any(math.isfinite(v) for _, values in self.series for v in values):
            return f"{len(self.series)} series, no finite value (NaN only)"
        return None


def ask(lab: Lab, expr: str, *, instant: bool, start: float, end: float) -> Answer:
    """The query as a Grafana panel sends it: instant at end, or over [start, end] every 5 s."""
    path = "/api/v1/query" if instant else "/api/v1/query_range"
    params = {"query": expr, "time": str(end)}
    if not instant:
        params = {"query": expr, "start": str(start), "end": str(end)}
        params["step"] = str(SCRAPE_INTERVAL_S)
    response = httpx.post(lab.prometheus_url + path, data=params, timeout=30, trust_env=False)
    body = response.json()
    if body.get("status") != "success":
        return Answer(error=f"{body.get('errorType')}: {body.get('error')}")
    series = []
    for item in body["data"]["result"]:
        samples = item["values"] if "values" in item else [item["value"]]
        series.append((item["metric"], [float(v) for _, v in samples]))
    return Answer(series=series)


def label_values(lab: Lab, query: str) -> list[str]:
    """A template variable's options, for the one form the dashboards use."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query.strip())
    assert match, f"unsupported variable query {query!r}"
    metric, label = match.groups()
    response = httpx.get(
        f"{lab.prometheus_url}/api/v1/label/{label}/values",
        params={"match[]": metric},
        timeout=10,
        trust_env=False,
    )
    return list(response.json()["data"])


@pytest.mark.lab
@pytest.mark.slow
def test_every_panel_query_returns_data(labs: Labs) -> None:
    """Every query of every panel returns finite data from the lab under load, or the test names
    it: the shipped code with its faults live, or, for fix-only metrics, the fixed code."""
    problems: list[str] = []
    evaluated = 0
    runner_queries = 0
    for name, dashboard, panel, t in every_query():
        expr = expand(t["expr"], dashboard)
        if RUNNER_METRICS.search(expr):
            runner_queries += 1  # no runner in these labs: test_prometheus.py checks these
            continue
        lab = labs.fixed if metrics_in(expr) else labs.shipped
        answer = ask(lab, expr, instant=t["instant"], start=labs.started, end=labs.checked_at)
        evaluated += 1
        if answer.problem:
            problems.append(
                f"{name} › {panel['title']} [{t['refId']}] on the {lab.name} lab: "
                f"{answer.problem}\n    {expr}"
            )
    for name, dashboard in load_dashboards():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] == "query" and not label_values(
                labs.shipped, variable["definition"]
            ):
                problems.append(f"{name} › variable ${variable['name']}: no options")
    assert evaluated >= 80
    assert runner_queries >= 5
    assert not problems, f"{len(problems)} of {evaluated} queries show no data:\n" + "\n".join(
        problems
    )


@pytest.mark.lab
@pytest.mark.slow
def test_service_map_draws_the_calls_between_services(labs: Labs) -> None:
    """The map's node and edge rows carry the fields Grafana needs, every edge ends at a node,
    and the order flow's calls (chain-a → chain-b → chain-c → chain-a) are on it."""
    (overview,) = [d for _, d in load_dashboards() if d["uid"] == "lab-overview"]
    (service_map,) = [p for p in all_panels(overview) if p["type"] == "nodeGraph"]
    rows: dict[str, list[dict[str, str]]] = {}
    for t in service_map["targets"]:
        answer = ask(
            labs.shipped,
            expand(t["expr"], overview),
            instant=True,
            start=labs.started,
            end=labs.checked_at,
        )
        rows[t["refId"]] = [labels for labels, _ in answer.series]
    nodes = {row["id"] for row in rows["nodes"]}
    assert nodes >= set(SERVICES)
    for ref, labels in rows.items():
        needed = {"id", "title"} if ref.startswith("nodes") else {"id", "source", "target"}
        assert all(needed <= row.keys() for row in labels), (ref, labels)
    edges = {(row["source"], row["target"]) for ref in rows if ref.startswith("edges")
             for row in rows[ref]}  # fmt: skip
    assert {s for s, _ in edges} | {t for _, t in edges} <= nodes, "an edge to no node"
    assert edges >= {
        ("chain-a", "chain-b"),
        ("chain-b", "chain-c"),
        ("chain-c", "chain-a"),
        ("feed", "profiles"),
    }


@pytest.mark.lab
@pytest.mark.slow
def test_fix_only_metrics_are_absent_from_the_shipped_code(labs: Labs) -> None:
    """The fix-only set is honest: the shipped lab has none of those metrics, the fixed lab all."""
    for metric in FIX_ONLY_METRICS:
        window = {"start": labs.started, "end": labs.checked_at}
        assert not ask(labs.shipped, f"count({metric})", instant=False, **window).series
        assert ask(labs.fixed, f"count({metric})", instant=False, **window).series, metric
