"""drill verify: overlay a scenario's triggers, drive Locust, check the SLAs, lift the overlay."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from drill import machine
from drill.collectors import COLLECTORS, PROBES, SNAPSHOTS, load_acted, triggers_acted
from drill.native import LabConfig, endpoints
from drill.program.journal import Journal, journal_path
from drill.scenarios import REQUEST_FIGURES, Load, Scenario, SlaCheck, Trigger, load_program
from faults import FlagStateError, load_catalog, verify_overlay, write_document

# Services poll the flag file every 200 ms; one second covers a loaded machine.
FLAG_SETTLE_S = 1.0
# Requests the server was still finishing when the clients stopped land within this.
DRAIN_S = 2.0
# Users finish the payment they are in (its last attempt may wait 10 s) before Locust exits.
STOP_TIMEOUT_S = 15


class VerifyError(Exception):
    """The run could not happen (exit 2); the message says what to do."""


@dataclass(frozen=True)
class Sample:
    method: str
    name: str
    ms: float
    ok: bool
    started: float | None = None  # epoch seconds; older sample files lack it

    @property
    def request(self) -> str:
        return f"{self.method} {self.name}"


@dataclass
class CheckResult:
    name: str
    figure: str
    request: str | None
    value: float
    max: float | None
    min: float | None
    passed: bool
    kind: str = "invariant"
    basis: str | None = None


@dataclass
class VerifyResult:
    scenario: str
    baseline: bool
    passed: bool
    started_at: str
    load_seconds: float
    users: int
    run_dir: str
    checks: list[CheckResult] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    warmup_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=True)


def read_samples(path: Path) -> list[Sample]:
    samples = []
    if path.exists():
        for line in path.read_text().splitlines():
            method, name, ms, ok, *rest = line.split("\t")
            started = float(rest[0]) if rest else None
            samples.append(Sample(method, name, float(ms), ok == "1", started))
    return samples


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of raw values (no buckets, no interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Judged:
    """The stretch of the load that is judged, and how its requests are timed out."""

    start: float  # epoch seconds
    seconds: float
    window: float
    client_timeout: float | None


def judged_stretch(started: float, seconds: float, load: Load) -> Judged:
    """The judged stretch: from when the load started, after its warm-up, to its end."""
    warmup = load.warmup or 0.0
    return Judged(
        start=started + warmup,
        seconds=seconds - warmup,
        window=load.window,
        client_timeout=load.client_timeout,
    )


def load_start(run_dir: Path, launched: float) -> float:
    """When Locust began its load (it writes the moment), else when verify launched it."""
    try:
        return float((run_dir / "locust-started").read_text())
    except (FileNotFoundError, ValueError):
        return launched


def stuck_windows(samples: list[Sample], judged: Judged) -> int:
    """Windows of the judged stretch in which no request completed successfully."""
    windows = max(1, math.floor(judged.seconds / judged.window))
    alive = set()
    for sample in samples:
        if sample.ok and sample.started is not None:
            finished = sample.started + sample.ms / 1000
            index = math.floor((finished - judged.start) / judged.window)
            if 0 <= index < windows:
                alive.add(index)
    return windows - len(alive)


def request_figures(samples: list[Sample], judged: Judged) -> dict[str, float]:
    times = [s.ms for s in samples]
    # A request within 2% of the client's patience ran into it (Locust times it a little short).
    hung_ms = judged.client_timeout * 1000 * 0.98 if judged.client_timeout else math.inf
    return {
        "requests": float(len(samples)),
        "success_ratio": sum(s.ok for s in samples) / len(samples) if samples else math.nan,
        "p50_ms": percentile(times, 0.50),
        "p95_ms": percentile(times, 0.95),
        "p99_ms": percentile(times, 0.99),
        "max_ms": max(times) if times else math.nan,
        "throughput_rps": len(samples) / judged.seconds,
        "stuck_windows": float(stuck_windows(samples, judged)),
        "hung_requests": float(sum(s.ms >= hung_ms for s in samples)),
    }


def check_result(check: SlaCheck, value: float) -> CheckResult:
    """A check of the SLA on a figure's value: passed when it is a number within the bounds."""
    passed = not math.isnan(value)
    passed = passed and (check.max is None or value <= check.max)
    passed = passed and (check.min is None or value >= check.min)
    return CheckResult(
        check.name,
        check.figure,
        check.request,
        value,
        check.max,
        check.min,
        passed,
        check.kind,
        check.basis,
    )


def evaluate(
    checks: list[SlaCheck], samples: list[Sample], judged: Judged, figures: dict[str, float]
) -> list[CheckResult]:
    results = []
    for check in checks:
        if check.figure in REQUEST_FIGURES:
            chosen = [s for s in samples if check.request in (None, s.request)]
            value = request_figures(chosen, judged)[check.figure]
        else:
            value = figures.get(check.figure, math.nan)
        results.append(check_result(check, value))
    return results


def trigger_checks(triggers: list[Trigger], figures: dict[str, float]) -> list[CheckResult]:
    """Each trigger must have taken its path at least min_acted times: proof it was survived."""
    results = []
    for trigger in triggers:
        figure = f"trigger.{trigger.flag}.acted"
        value = figures.get(figure, 0.0)
        results.append(
            CheckResult(
                f"trigger {trigger.flag}={trigger.variant} acted",
                figure,
                None,
                value,
                None,
                trigger.min_acted,
                value >= trigger.min_acted,
            )
        )
    return results


def _check_steady_state(scenario: Scenario, urls: dict[str, str]) -> None:
    for service in scenario.services:
        url = urls.get(service)
        if url is None:
            raise VerifyError(f"the lab has no service {service!r}")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=3).status_code == 200
        except httpx.HTTPError as exc:
            raise VerifyError(
                f"{service} is not reachable at {url} ({type(exc).__name__}); "
                "start the lab with `drill up --native` (or `docker compose up -d`)"
            ) from None
        if not ready:
            raise VerifyError(f"{service} at {url} is up but not ready; see `drill status`")
        probe = PROBES.get(service)
        problem = probe(url) if probe is not None else None
        if problem is not None:
            raise VerifyError(problem)


def _run_locust(
    root: Path, scenario: Scenario, urls: dict[str, str], run_dir: Path, users: int, seconds: float
) -> None:
    load = scenario.load
    command = [
        sys.executable, "-m", "locust",
        "-f", str(root / load.locustfile),
        "--headless", "--only-summary",
        "--host", urls[load.host],
        "--users", str(users),
        "--spawn-rate", str(load.spawn_rate),
        "--run-time", f"{math.ceil(seconds)}s",
        "--stop-timeout", str(STOP_TIMEOUT_S),
        "--loglevel", "WARNING",
        load.user,
    ]  # fmt: skip
    env = {
        **os.environ,
        "DRILL_SAMPLES": str(run_dir / "samples.tsv"),
        "DRILL_GROUND_TRUTH": str(run_dir / "truth.jsonl"),
        "DRILL_RUN_ID": run_dir.name,
        "DRILL_ACTED": str(run_dir / "locust-acted.json"),
        "DRILL_LOAD_STARTED": str(run_dir / "locust-started"),
        "DRILL_CLIENT_TIMEOUT_S": str(load.client_timeout or ""),
        # Load tests that read flags (feed.heavy_users) read this lab's.
        "DRILL_STATE_DIR": str(run_dir.parents[1]),
    }
    with open(run_dir / "locust.log", "w") as log:
        # Locust runs as a subprocess: importing it would monkey-patch this process with gevent.
        process = subprocess.Popen(
            machine.pinned(command), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        budget = seconds + STOP_TIMEOUT_S + 60
        try:
            code = process.wait(timeout=budget)
        except BaseException as exc:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                process.kill()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise VerifyError(
                    f"locust did not finish within {budget:g}s; see {run_dir / 'locust.log'}"
                ) from None
            raise
    # Locust exits 1 when any request failed, which is a finding, not a broken run.
    if code not in (0, 1) or not (run_dir / "samples.tsv").exists():
        tail = "\n".join((run_dir / "locust.log").read_text().splitlines()[-15:])
        raise VerifyError(f"locust exited with {code} and produced no samples:\n{tail}")


def _acted(scenario: Scenario, urls: dict[str, str]) -> Counter[str]:
    """Trigger evaluations that took the trigger's path, summed over the scenario's services."""
    total: Counter[str] = Counter()
    for service in scenario.services:
        try:
            total += triggers_acted(urls[service])
        except httpx.HTTPError as exc:
            raise VerifyError(
                f"{service} did not answer /metrics ({type(exc).__name__}: {exc}); "
                "see `drill status` and its log"
            ) from None
    return total


def _drive(
    root: Path, scenario: Scenario, urls: dict[str, str], run_dir: Path, users: int, seconds: float
) -> tuple[Counter[str], float]:
    """Let the flags settle, take the checks' first reads, run the load; returns the trigger
    evaluations counted before it and when it started."""
    time.sleep(FLAG_SETTLE_S)
    acted_before = _acted(scenario, urls)
    for service in scenario.services:
        snapshot = SNAPSHOTS.get(service)
        if snapshot is not None:
            try:
                snapshot(urls[service], run_dir)
            except httpx.HTTPError as exc:
                raise VerifyError(
                    f"{service} did not answer the checks' first read "
                    f"({type(exc).__name__}: {exc}); see `drill status` and its log"
                ) from None
    load_started = time.time()
    _run_locust(root, scenario, urls, run_dir, users, seconds)
    return acted_before, load_started


def run_verify(
    config: LabConfig,
    scenario_name: str,
    *,
    baseline: bool = False,
    seconds: float | None = None,
    users: int | None = None,
) -> VerifyResult:
    """One verification run, journaled with its verdict (pass, fail, or error: no run)."""
    journal = Journal(journal_path(config.state_dir))
    by = f"verify {scenario_name}" + (" --baseline" if baseline else "")
    try:
        result = _run_verify(config, scenario_name, baseline, seconds, users, by)
    except VerifyError as exc:
        journal.append("verify_run", by, scenario=scenario_name, verdict="error", error=str(exc))
        raise
    verdict = "pass" if result.passed else "fail"
    result_file = str(Path(result.run_dir) / "result.json")
    journal.append("verify_run", by, scenario=scenario_name, verdict=verdict, result=result_file)
    return result


def _run_verify(
    config: LabConfig,
    scenario_name: str,
    baseline: bool,
    seconds: float | None,
    users: int | None,
    by: str,
) -> VerifyResult:
    """One verification run, `by` in the flags' history; its overlay on the flags is lifted
    whatever happens."""
    root, state_dir = config.root, config.state_dir
    catalog = load_catalog()
    program = load_program(root / "scenarios.yaml", catalog)
    scenario = program.scenario(scenario_name)
    urls = endpoints(config)
    _check_steady_state(scenario, urls)

    started = datetime.now(UTC)
    run_id = f"{scenario_name}-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    run_dir = state_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    seconds = seconds or scenario.load.duration
    users = users or scenario.load.users
    warmup = scenario.load.warmup or 0.0
    if seconds <= warmup:
        raise VerifyError(
            f"--duration {seconds:g} leaves nothing to judge: {scenario_name} warms up for "
            f"{warmup:g} s first; give a longer duration"
        )

    # Baseline: every flag at its default; otherwise the triggers and every other flag at its
    # default, so the verdict does not depend on what the program or the instructor has on.
    triggers = {} if baseline else {t.flag: (t.variant, t.percent) for t in scenario.triggers}
    try:
        with verify_overlay(state_dir, catalog, triggers, by=by) as document:
            # The flags the run set, for collectors whose expectations depend on them.
            write_document(run_dir / "flags.json", document)
            acted_before, load_started = _drive(root, scenario, urls, run_dir, users, seconds)
    except FlagStateError as exc:
        raise VerifyError(str(exc)) from None
    time.sleep(DRAIN_S)

    figures: dict[str, float] = {}
    acted = _acted(scenario, urls) - acted_before + load_acted(run_dir / "locust-acted.json")
    for trigger in scenario.triggers:
        figures[f"trigger.{trigger.flag}.acted"] = float(acted[trigger.flag])
    for service in scenario.services:
        collector = COLLECTORS.get(service)
        if collector is not None:
            try:
                figures.update(collector(urls[service], run_dir / "truth.jsonl", config))
            except httpx.HTTPError as exc:
                raise VerifyError(
                    f"the load ran, but {service} did not answer the checks' reads "
                    f"({type(exc).__name__}: {exc}); see `drill status` and its log"
                ) from None
    samples = read_samples(run_dir / "samples.tsv")
    judged = judged_stretch(load_start(run_dir, load_started), seconds, scenario.load)
    if warmup:
        # Requests started while users were still spawning and caches were cold are not judged.
        samples = [s for s in samples if s.started is None or s.started >= judged.start]
    figures.update(request_figures(samples, judged))
    # The baseline asks "does it look healthy?"; checks of how the fix works do not apply.
    sla = [check for check in scenario.sla if check.baseline or not baseline]
    checks = evaluate(sla, samples, judged, figures)
    if not baseline:
        checks += trigger_checks(scenario.triggers, figures)
    result = VerifyResult(
        scenario=scenario_name,
        baseline=baseline,
        passed=all(c.passed for c in checks),
        started_at=started.isoformat(timespec="seconds"),
        load_seconds=seconds,
        users=users,
        run_dir=str(run_dir),
        checks=checks,
        figures=figures,
        warmup_seconds=warmup,
    )
    (run_dir / "result.json").write_text(result.to_json())
    return result
