"""The native lab: start, stop, restart and probe its services as local uvicorn processes.

The model (services, ports, config) is drill.lab.model, the run files drill.lab.runfiles,
the process control drill.lab.processes; this module puts them together and re-exports the
model's names, so `native.LabConfig` and `native.SERVICES` read as before.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

import faults
from drill import machine, prometheus
from drill.lab import processes, runfiles
from drill.lab.model import (
    GROUPS,
    HOST,
    PROMETHEUS,
    SERVICES,
    LabConfig,
    LabError,
    ServiceSpec,
    ServiceStatus,
    child_env,
    endpoints,
    find_root,
)
from drill.lab.processes import free_port_offset, port_free, uvicorn_command
from drill.lab.runfiles import LAB_FILE, READY_PATH, RunRecord

__all__ = [
    "GROUPS",
    "HOST",
    "LAB_FILE",
    "PROMETHEUS",
    "READY_PATH",
    "SERVICES",
    "LabConfig",
    "LabError",
    "ServiceSpec",
    "ServiceStatus",
    "child_env",
    "down",
    "endpoints",
    "find_root",
    "free_port_offset",
    "port_free",
    "restart",
    "status",
    "up",
    "uvicorn_command",
]

log = logging.getLogger("drill.native")

_POLL_S = 0.1


def up(
    config: LabConfig, only: list[str] | None = None, ready_timeout: float = 30
) -> list[ServiceStatus]:
    """Start the selected services (default: all) unless running, and wait until they're ready."""
    names = _select(only)
    _prepare(config)
    with _locked(config):
        return _up(config, names, ready_timeout)


def down(config: LabConfig) -> list[str]:
    """Stop every process recorded in the run files; returns the names of those stopped."""
    if not config.run_dir.is_dir():
        (config.state_dir / LAB_FILE).unlink(missing_ok=True)
        return []
    with _locked(config):
        return _down(config, None)


def restart(config: LabConfig, names: list[str], ready_timeout: float = 30) -> list[ServiceStatus]:
    """Stop the named services (an empty list means all) and start them again."""
    selected = _select(names or None)
    _prepare(config)
    with _locked(config):
        _down(config, selected)
        return _up(config, selected, ready_timeout)


def status(config: LabConfig) -> list[ServiceStatus]:
    """Every known service's process and readiness, read-only."""
    recorded = {path.stem: path for path in sorted(config.run_dir.glob("*.json"))}
    names = [*SERVICES, PROMETHEUS.name]
    names += [name for name in recorded if name not in names]
    rows: list[ServiceStatus] = []
    with _client() as client:
        for name in names:
            record = runfiles.read_record(recorded[name]) if name in recorded else None
            spec = _spec(name)
            if record is not None and _owned(record):
                ready, answer = _probe(client, record.url + record.ready_path)
                detail = "ready" if ready else f"running but not ready ({answer})"
                rows.append(ServiceStatus(name, record.url, record.pid, True, ready, detail))
                continue
            url = config.url(spec) if spec is not None else record.url if record else ""
            ready_path = spec.ready_path if spec is not None else READY_PATH
            ready, _ = _probe(client, url + ready_path) if url else (False, "")
            if spec is PROMETHEUS and record is None and not ready:
                continue  # not part of this lab: no prometheus binary, or started with --only
            if ready:
                detail = f"not started by drill, but {url}{ready_path} answers (the compose lab?)"
            elif record is not None:
                detail = f"not running (stale run file for pid {record.pid}; drill down clears it)"
            else:
                detail = "not running"
            rows.append(ServiceStatus(name, url, None, False, ready, detail))
    return rows


@dataclass
class _Pending:
    """A service this call waits for: its record, and its process when this call started it."""

    record: RunRecord
    process: subprocess.Popen[bytes] | None
    log_path: Path
    log_offset: int


def _spec(name: str) -> ServiceSpec | None:
    return PROMETHEUS if name == PROMETHEUS.name else SERVICES.get(name)


def _owned(record: RunRecord) -> bool:
    return processes.owned(record.pid, record.app)


def _select(names: Sequence[str] | None) -> list[str]:
    if names is None:
        # The whole lab: Prometheus too, when it is installed.
        return [*SERVICES, PROMETHEUS.name] if prometheus.binary() else list(SERVICES)
    names = [member for name in names for member in GROUPS.get(name, (name,))]
    unknown = [name for name in names if _spec(name) is None]
    if unknown:
        raise LabError(
            f"unknown service {', '.join(map(repr, unknown))}; choose from: "
            f"{', '.join([*SERVICES, *GROUPS, PROMETHEUS.name])}"
        )
    if PROMETHEUS.name in names and not prometheus.binary():
        raise LabError(f"{prometheus.BINARY} is not on PATH; {prometheus.INSTALL_HINT}")
    return list(dict.fromkeys(names))


def _prepare(config: LabConfig) -> None:
    if not (config.root / "services").is_dir():
        raise LabError(
            f"{config.root} has no services/ directory; run drill inside the lab checkout "
            "or pass its path with --root"
        )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if not faults.state_path(config.state_dir).exists():
        # From the layers, when a state dir kept them (all defaults on a fresh one).
        faults.recompute_document(config.state_dir, faults.load_catalog())


def _locked(config: LabConfig) -> contextlib.AbstractContextManager[None]:
    # Two `drill up`s at once would both see a service as stopped and race for its port.
    return faults.file_lock(config.run_dir / ".lock")


def _client() -> httpx.Client:
    # trust_env=False: an HTTP(S)_PROXY in the environment must not capture calls to 127.0.0.1.
    return httpx.Client(timeout=1.0, trust_env=False)


def _up(config: LabConfig, names: list[str], ready_timeout: float) -> list[ServiceStatus]:
    results: dict[str, ServiceStatus] = {}
    waiting: list[_Pending] = []
    to_start: list[ServiceSpec] = []
    with _client() as client:
        for name in names:
            spec = _spec(name)
            assert spec is not None  # _select checked the names
            run_file = config.run_dir / f"{name}.json"
            record = runfiles.read_record(run_file) if run_file.exists() else None
            if record is not None and _owned(record):
                ready, _ = _probe(client, record.url + record.ready_path)
                if ready:
                    results[name] = ServiceStatus(
                        name, record.url, record.pid, True, True, "already running"
                    )
                else:
                    # Not ours to kill: it may be mid-way through a drill; wait for it instead.
                    log_path = config.log_dir / f"{name}.log"
                    waiting.append(_Pending(record, None, log_path, runfiles.size(log_path)))
                continue
            run_file.unlink(missing_ok=True)
            to_start.append(spec)

        busy = [spec for spec in to_start if not port_free(config.port(spec))]
        if busy:
            taken = ", ".join(f"{config.port(spec)} ({spec.name})" for spec in busy)
            raise LabError(
                f"port {taken} is in use by a process drill did not start; stop it (is the "
                "compose lab up? `docker compose down`) or move the native lab with "
                "DRILL_PORT_OFFSET=100"
            )

        started: list[_Pending] = []
        try:
            for spec in to_start:
                started.append(_spawn(config, spec))
            _write_lab_file(config)
            _await_ready(client, started + waiting, ready_timeout)
        except BaseException:
            # Ctrl-C included: leave nothing behind that this call started.
            for pending in started:
                processes.stop(pending.record.pid)
                (config.run_dir / f"{pending.record.name}.json").unlink(missing_ok=True)
            _write_lab_file(config)
            raise

    for pending in started:
        results[pending.record.name] = ServiceStatus(
            pending.record.name, pending.record.url, pending.record.pid, True, True, "started"
        )
    for pending in waiting:
        results[pending.record.name] = ServiceStatus(
            pending.record.name, pending.record.url, pending.record.pid, True, True, "ready"
        )
    return [results[name] for name in names]


def _spawn(config: LabConfig, spec: ServiceSpec) -> _Pending:
    port = config.port(spec)
    if spec is PROMETHEUS:
        command, env = _prometheus_command(config), config.env()
        marker = str(_prometheus_config_file(config))
    else:
        command = machine.pinned(uvicorn_command(spec, HOST, port, config.root))
        marker, env = spec.app, child_env(config, spec)
    log_path = config.log_dir / f"{spec.name}.log"
    log_offset = runfiles.size(log_path)
    process = processes.start(spec.name, command, config.root, env, log_path)
    record = RunRecord(
        name=spec.name,
        pid=process.pid,
        port=port,
        url=config.url(spec),
        app=marker,
        root=str(config.root),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ready_path=spec.ready_path,
    )
    runfiles.write_record(config.run_dir, record)
    return _Pending(record, process, log_path, log_offset)


def _prometheus_config_file(config: LabConfig) -> Path:
    return config.state_dir / "prometheus" / "prometheus.yml"


def _prometheus_command(config: LabConfig) -> list[str]:
    executable = prometheus.binary()
    if executable is None:
        raise LabError(f"{prometheus.BINARY} is not on PATH; {prometheus.INSTALL_HINT}")
    config_file = _prometheus_config_file(config)
    targets = {name: f"{HOST}:{config.port(spec)}" for name, spec in SERVICES.items()}
    targets[prometheus.RUNNER_JOB] = f"{HOST}:{prometheus.RUNNER_PORT + config.port_offset}"
    listen = f"{HOST}:{config.port(PROMETHEUS)}"
    try:
        prometheus.write_native_config(
            config.root / "prometheus" / "prometheus.yml", config_file, targets, listen
        )
    except prometheus.PrometheusConfigError as exc:
        raise LabError(str(exc)) from None
    data_dir = config.state_dir / "prometheus" / "data"
    return prometheus.command(executable, config_file, data_dir, listen)


def _await_ready(client: httpx.Client, pending: list[_Pending], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    remaining = list(pending)
    while remaining:
        for item in list(remaining):
            record = item.record
            code = item.process.poll() if item.process is not None else None
            if code is not None or (item.process is None and not processes.alive(record.pid)):
                how = f"exited with code {code}" if code is not None else "exited"
                raise LabError(
                    f"{record.name} {how} before it was ready. "
                    f"{runfiles.tail_text(item.log_path, item.log_offset)}\n"
                    f"Fix the error above, then run `drill up --native` again."
                )
            ready, answer = _probe(client, record.url + record.ready_path)
            if ready:
                remaining.remove(item)
            elif time.monotonic() >= deadline:
                raise LabError(
                    f"{record.name} did not answer {record.url}{record.ready_path} with 200 within "
                    f"{timeout:g} s (last answer: {answer}). "
                    f"{runfiles.tail_text(item.log_path, item.log_offset)}\n"
                    f"Fix the error above (or, if the machine is just slow, allow a longer ready "
                    f"timeout), then run `drill up --native` again."
                )
        if remaining:
            time.sleep(_POLL_S)


def _probe(client: httpx.Client, url: str) -> tuple[bool, str]:
    """Whether url (a readiness endpoint) answers 200, and what it answered."""
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return response.status_code == 200, f"HTTP {response.status_code}"


def _down(config: LabConfig, names: Collection[str] | None) -> list[str]:
    stopped: list[str] = []
    for path in sorted(config.run_dir.glob("*.json")):
        name = path.stem
        if names is not None and name not in names:
            continue
        record = runfiles.read_record(path)
        if record is None:
            log.warning("%s: unreadable run file %s removed", name, path)
        elif _owned(record):
            processes.stop(record.pid)
            stopped.append(name)
        elif processes.alive(record.pid):
            log.warning("%s: pid %d now runs another program; left it alone", name, record.pid)
        path.unlink(missing_ok=True)
    _write_lab_file(config)
    return stopped


def _write_lab_file(config: LabConfig) -> None:
    services: dict[str, str] = {}
    for path in sorted(config.run_dir.glob("*.json")):
        record = runfiles.read_record(path)
        if record is not None and _owned(record):
            services[record.name] = record.url
    lab_file = config.state_dir / LAB_FILE
    if services:
        runfiles.write_json(lab_file, {"services": services})
    else:
        lab_file.unlink(missing_ok=True)
