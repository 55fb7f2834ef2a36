"""Decoys: the generic-fault flags, services/kit applying them by service, route and share, and
the runner setting and clearing them on the program's clock."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from drill import native
from drill.agenda import DECOY_KINDS
from drill.program import control
from drill.program.journal import Journal
from drill.program.plan import wanted
from drill.program.runner import ProgramFiles, Runner, load
from faults import (
    PROGRAM,
    Flags,
    FlagSetting,
    clear_layer,
    decoy_flag,
    layer_flags,
    load_catalog,
    read_document,
    reset_flags,
    set_layer_flags,
    state_path,
)
from services.kit.app import create_service_app
from services.kit.decoys import MEMORY_CAP_BYTES
from services.kit.settings import ServiceSettings
from tests.conftest import REPO_ROOT

CATALOG = load_catalog()
SERVICE = "bystander"
SLOW_ROUTE = "/items/{item_id}"
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

router = APIRouter()


@router.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@router.get("/other")
async def other() -> dict[str, str]:
    return {"ok": "yes"}


def here(route: str | None = None, service: str = SERVICE) -> dict[str, str]:
    return {"service": service} | ({"route": route} if route else {})


def make_app(tmp_path: Path, exporter: InMemorySpanExporter | None = None):  # type: ignore[no-untyped-def]
    provider = TracerProvider()
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = ServiceSettings(service_name=SERVICE, state_dir=tmp_path, flag_poll_ms=50)
    return create_service_app(settings, title=SERVICE, routers=[router], tracer_provider=provider)


@contextmanager
def lab(
    tmp_path: Path,
    flags: dict[str, FlagSetting],
    exporter: InMemorySpanExporter | None = None,
) -> Iterator[TestClient]:
    """A kit service whose program layer holds `flags` before it starts."""
    reset_flags(tmp_path, CATALOG)
    if flags:
        set_layer_flags(tmp_path, CATALOG, PROGRAM, flags)
    with TestClient(make_app(tmp_path, exporter)) as client:
        yield client


def timed(client: TestClient, path: str) -> float:
    started = time.perf_counter()
    assert client.get(path).status_code == 200
    return time.perf_counter() - started


def wait_until_off(flags: Flags, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while flags.live_decoys():
        assert time.monotonic() < deadline, "the decoy flag never went off"
        time.sleep(0.02)


# -- the catalog ----------------------------------------------------------------------------


def test_every_decoy_kind_has_one_generic_flag_and_nothing_else_is_a_decoy() -> None:
    """DECOY_KINDS and the catalog's decoy flags agree; each is off (0) by default, on above."""
    assert {decoy_flag(kind) for kind in DECOY_KINDS} == {s.key for s in CATALOG.decoys()}
    for spec in CATALOG.decoys():
        assert spec.default_value == 0 and set(spec.variants) == {"off", "on"}, spec.key
        assert isinstance(spec.variants["on"], int) and spec.variants["on"] > 0, spec.key


def test_flagd_serves_a_targeted_flag_only_on_its_service_and_route_for_its_share(
    tmp_path: Path,
) -> None:
    """flagd's in-process resolver evaluates the `if` on service and route and the nested
    fractional: about the share on the target, nothing elsewhere, and one key stays put."""
    reset_flags(tmp_path, CATALOG)
    key = decoy_flag("latency")
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {key: ("on", 30, here(SLOW_ROUTE))})
    flags = Flags(state_path(tmp_path), service=SERVICE, catalog=CATALOG)
    flags.start()
    try:
        assert flags.live_decoys() == (key,)
        keys = [uuid.uuid4().hex for _ in range(1000)]
        target = [flags.integer(key, {"targetingKey": k, **here(SLOW_ROUTE)}) for k in keys]
        share = sum(v == 300 for v in target) / len(keys)
        assert 0.22 < share < 0.38, share
        again = [flags.integer(key, {"targetingKey": k, **here(SLOW_ROUTE)}) for k in keys]
        assert again == target, "a targeting key keeps its bucket"
        for elsewhere in (here("/other"), here(SLOW_ROUTE, service="ledger"), {}):
            served = {flags.integer(key, {"targetingKey": k, **elsewhere}) for k in keys[:200]}
            assert served == {0}, elsewhere
    finally:
        flags.close()
    bystander = Flags(state_path(tmp_path), service="ledger", catalog=CATALOG)
    bystander.start()
    try:
        assert bystander.live_decoys() == (), "a decoy pinned to another service is not live here"
    finally:
        bystander.close()


def test_flags_list_shows_where_a_decoy_is_aimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drill flags list` shows a program-set decoy's share, service and route."""
    from typer.testing import CliRunner

    from drill.cli import app

    monkeypatch.setenv("DRILL_STATE_DIR", str(tmp_path))
    where = here(SLOW_ROUTE, service="feed")
    set_layer_flags(tmp_path, CATALOG, PROGRAM, {decoy_flag("log_flood"): ("on", 40, where)})
    listing = CliRunner().invoke(app, ["flags", "list"], env={"COLUMNS": "400"})
    assert listing.exit_code == 0, listing.output
    row = next(line for line in listing.output.splitlines() if "generic.log_flood" in line)
    assert "on (20) for 40% route=/items/{item_id} service=feed" in row


# -- the kit applies each kind ----------------------------------------------------------------


def test_latency_slows_the_targeted_route_only(tmp_path: Path) -> None:
    """300 ms on /items/{item_id} of this service; /other, and a decoy aimed at another
    service, leave requests fast."""
    with lab(tmp_path, {decoy_flag("latency"): ("on", None, here(SLOW_ROUTE))}) as client:
        slow = min(timed(client, f"/items/{n}") for n in range(3))
        fast = max(timed(client, "/other") for _ in range(3))
    # The decoy sleeps 300 ms: a lower bound the sleep guarantees on any machine, and the same
    # line as the upper bound for requests it must leave alone, the most a busy machine gets.
    assert slow >= 0.3
    assert fast < 0.3
    with lab(tmp_path, {decoy_flag("latency"): ("on", None, here(service="ledger"))}) as client:
        assert max(timed(client, f"/items/{n}") for n in range(3)) < 0.3


def test_error_rate_answers_503_for_about_its_share(tmp_path: Path) -> None:
    """At 25%, about a quarter of requests get 503 with Retry-After and a bland body; the probes
    and /metrics never do."""
    with lab(tmp_path, {decoy_flag("error_rate"): ("on", 25, here())}) as client:
        answers = [client.get("/other") for _ in range(400)]
        probes = {client.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")}
    failed = [a for a in answers if a.status_code == 503]
    assert {a.status_code for a in answers} == {200, 503}
    assert 0.15 < len(failed) / len(answers) < 0.35, len(failed)
    assert failed[0].headers["retry-after"] == "1"
    assert "decoy" not in failed[0].text and "generic" not in failed[0].text
    assert probes == {200}


def test_cpu_burn_shows_in_process_cpu_time(tmp_path: Path) -> None:
    """Ten targeted requests cost at least 10 x 20 ms of process CPU time more than ten others."""
    with lab(tmp_path, {decoy_flag("cpu_burn"): ("on", None, here(SLOW_ROUTE))}) as client:
        client.get("/other")
        started = time.process_time()
        for _ in range(10):
            client.get("/other")
        plain = time.process_time() - started
        started = time.process_time()
        for n in range(10):
            client.get(f"/items/{n}")
        burnt = time.process_time() - started
    assert burnt - plain >= 10 * 0.020 * 0.9, (burnt, plain)


@pytest.mark.anyio
async def test_cpu_burn_never_blocks_the_event_loop_for_the_whole_burn(tmp_path: Path) -> None:
    """While a request burns 20 ms of CPU, a ticker on the same loop never waits through 15 ms of
    it: the burn yields between its 2 ms slices. The gaps are counted in this thread's CPU time,
    so a busy machine that takes the CPU away from the test does not make a gap look longer."""
    app = make_app(tmp_path)
    flags: Flags = app.state.flags
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.thread_time()
        while not done:
            await anyio.sleep(0)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # The first request builds the middleware stack and the route table: not the burn's.
        with flags.override({decoy_flag("cpu_burn"): 1}):
            await client.get("/other")
        with flags.override({decoy_flag("cpu_burn"): 20}):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ticker)
                await anyio.sleep(0.01)
                started = time.thread_time()
                assert (await client.get("/other")).status_code == 200
                burnt = time.thread_time() - started
                done = True
    assert burnt >= 0.018
    assert max(gaps) < 0.015, max(gaps)


def test_memory_growth_is_capped_and_released_when_the_flag_goes_off(tmp_path: Path) -> None:
    """256 KiB kept per targeted request, never past the cap, all of it let go once it is off."""
    with lab(tmp_path, {decoy_flag("memory_growth"): ("on", None, here())}) as client:
        kept = client.app.state.decoy_memory  # type: ignore[attr-defined]
        for _ in range(10):
            client.get("/other")
        assert sum(map(len, kept)) == 10 * 256 * 1024
        for _ in range(MEMORY_CAP_BYTES // (256 * 1024)):
            client.get("/other")
        assert sum(map(len, kept)) == MEMORY_CAP_BYTES
        clear_layer(tmp_path, CATALOG, PROGRAM)
        wait_until_off(client.app.state.flags)  # type: ignore[attr-defined]
        client.get("/other")
        assert kept == []


def test_log_flood_writes_warning_lines_with_the_trace_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each targeted request logs 20 WARN lines carrying its trace id; other routes none."""
    with lab(tmp_path, {decoy_flag("log_flood"): ("on", None, here(SLOW_ROUTE))}) as client:
        capsys.readouterr()
        trace_id = client.get("/items/1").headers["x-trace-id"]
        flooded = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        client.get("/other")
        quiet = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warnings = [e for e in flooded if e["level"] == "warning"]
    assert len(warnings) == 20
    assert {e["trace_id"] for e in warnings} == {trace_id}
    assert not [e for e in quiet if e["level"] == "warning"]


def test_with_reveal_off_nothing_names_a_decoy_and_with_it_on_the_span_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every decoy on: no span attribute, metric or log line names one; in reveal mode the
    server span carries drill.decoy.<flag>."""
    every = {decoy_flag(kind): ("on", 50.0, here()) for kind in DECOY_KINDS}
    exporter = InMemorySpanExporter()
    with lab(tmp_path, every, exporter) as client:  # type: ignore[arg-type]
        for n in range(20):
            client.get(f"/items/{n}")
        metrics = client.get("/metrics").text
    dark = json.dumps(
        [
            {**dict(span.attributes or {}), "name": span.name}
            for span in exporter.get_finished_spans()
        ]
    )
    logs = capsys.readouterr().out
    assert "warning" in logs, "the log flood ran"
    for text in (dark, metrics, logs):
        assert "decoy" not in text and "generic" not in text
    exporter = InMemorySpanExporter()  # the first app's shutdown stopped the first one
    with lab(tmp_path, {**every, "lab.reveal": ("on", None)}, exporter) as client:
        for n in range(20):
            client.get(f"/items/{n}")
    revealed = [dict(span.attributes or {}) for span in exporter.get_finished_spans()]
    assert any("drill.decoy.generic.latency" in attributes for attributes in revealed)


# -- the runner sets and clears them ----------------------------------------------------------


def test_the_runner_sets_a_due_decoys_flag_on_its_service_and_clears_it_after(
    tmp_path: Path,
) -> None:
    """scenarios.yaml's latency decoy (20%, 0:25-0:45) is exactly generic.latency in the
    program layer while due, limited to its drawn service, journaled, and gone at 0:46; the
    rollback clears a decoy too."""
    config = native.LabConfig(REPO_ROOT, tmp_path / "state")
    started = control.prepare(config, traffic=False, annotations=False, now=T0)
    program, catalog = load(config)
    runner = Runner(config, program, catalog, started.seed)
    runner.tick(T0 + timedelta(minutes=20))
    assert decoy_flag("latency") not in layer_flags(config.state_dir, CATALOG, PROGRAM)
    due = runner.tick(T0 + timedelta(minutes=30))
    (decoy,) = due.decoys
    assert decoy.service is not None
    entry = layer_flags(config.state_dir, CATALOG, PROGRAM)[decoy_flag("latency")]
    assert (entry.variant, entry.percent, entry.where) == ("on", 20.0, {"service": decoy.service})
    expected = set(wanted(program, 30 * 60, started.seed).flags)
    assert set(layer_flags(config.state_dir, CATALOG, PROGRAM)) == expected
    assert {key for key in expected if key.startswith("generic.")} == {"generic.latency"}
    served = read_document(state_path(config.state_dir), CATALOG)["flags"]["generic.latency"]
    assert served["targeting"]["if"][0] == {"==": [{"var": "service"}, decoy.service]}
    runner.tick(T0 + timedelta(minutes=46))
    assert decoy_flag("latency") not in layer_flags(config.state_dir, CATALOG, PROGRAM)
    journal = Journal(ProgramFiles.of(config.state_dir).journal).read().events
    changes = [e.fields for e in journal if e.kind == "flag_changed"]
    latency = [c for c in changes if c["flag"] == "generic.latency"]
    assert [(c["variant"], c.get("where")) for c in latency] == [
        ("on", {"service": decoy.service}),
        ("off", None),
    ]
    assert not [e for e in journal if e.kind == "note" and "decoy" in str(e.fields)]
    runner.tick(T0 + timedelta(minutes=40))
    assert decoy_flag("latency") in layer_flags(config.state_dir, CATALOG, PROGRAM)
    runner.rollback("stopped")
    assert layer_flags(config.state_dir, CATALOG, PROGRAM) == {}
    served = read_document(state_path(config.state_dir), CATALOG)["flags"]["generic.latency"]
    assert "targeting" not in served and served["defaultVariant"] == "off"
