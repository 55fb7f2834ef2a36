"""The native lab: each service as a local uvicorn process that drill starts, tracks and stops."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import faults
from drill import machine, prometheus

log = logging.getLogger("drill.native")

HOST = "127.0.0.1"
LAB_FILE = "lab.json"
READY_PATH = "/readyz"
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 20
_POLL_S = 0.1


class LabError(Exception):
    """A lab failure the user can act on; the message says what to do."""


@dataclass(frozen=True)
class ServiceSpec:
    """One lab service: its name, ASGI app factory, default port, extra environment and peers.

    `peers` maps an environment variable to another service's name; the child gets that
    service's URL in this lab (port offset included), so a service never hard-codes a port.
    """

    name: str
    app: str = "services.ledger.app:create_app"
    port: int = 8001
    env: dict[str, str] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)
    ready_path: str = READY_PATH


# One row per service. The chain services share one package and differ only by env.
SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("ledger", "services.ledger.app:create_app", 8001),
        ServiceSpec(
            "chain-a",
            "services.chain.app:create_app",
            8011,
            env={"CHAIN_ROLE": "a"},
            peers={"CHAIN_PRICING_URL": "chain-b"},
        ),
        ServiceSpec(
            "chain-b",
            "services.chain.app:create_app",
            8012,
            env={"CHAIN_ROLE": "b"},
            peers={"CHAIN_STOCK_URL": "chain-c"},
        ),
        ServiceSpec(
            "chain-c",
            "services.chain.app:create_app",
            8013,
            env={"CHAIN_ROLE": "c"},
            peers={"CHAIN_ORDERS_URL": "chain-a"},
        ),
        ServiceSpec(
            "feed", "services.feed.app:create_app", 8021, peers={"PROFILES_URL": "profiles"}
        ),
        ServiceSpec("profiles", "services.profiles.app:create_app", 8022),
    )
}
# Names that stand for several services on the command line (`drill restart chain`).
GROUPS: dict[str, tuple[str, ...]] = {"chain": ("chain-a", "chain-b", "chain-c")}
# Not a lab service but part of the native lab whenever its binary is on PATH. Its `app` is
# only a name: the command line comes from drill.prometheus.
PROMETHEUS = ServiceSpec(
    prometheus.NAME, prometheus.BINARY, prometheus.PORT, ready_path=prometheus.READY_PATH
)


@dataclass(frozen=True)
class ServiceStatus:
    """A service's URL, its recorded process, and whether that process runs and is ready."""

    name: str
    url: str
    pid: int | None
    running: bool
    ready: bool
    detail: str


@dataclass(init=False)
class LabConfig:
    """Where the lab's source and state live, and how its services reach their surroundings."""

    root: Path
    state_dir: Path
    port_offset: int
    database_url: str | None
    otlp_endpoint: str | None
    redis_url: str | None

    def __init__(
        self,
        root: Path,
        state_dir: Path | None = None,
        port_offset: int = 0,
        database_url: str | None = None,
        otlp_endpoint: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        # Absolute paths: children run with cwd=root, and the state dir goes into their env.
        self.root = Path(root).resolve()
        self.state_dir = Path(state_dir).resolve() if state_dir else self.root / ".drill"
        self.port_offset = port_offset
        self.database_url = database_url
        self.otlp_endpoint = otlp_endpoint
        self.redis_url = redis_url

    @classmethod
    def from_env(cls, root: Path | None = None) -> LabConfig:
        """The configuration from DRILL_* and the services' own environment variables."""
        env = os.environ
        offset_text = env.get("DRILL_PORT_OFFSET", "").strip()
        try:
            offset = int(offset_text) if offset_text else 0
        except ValueError:
            raise LabError(
                f"DRILL_PORT_OFFSET must be a whole number such as 100, not {offset_text!r}"
            ) from None
        state = env.get("DRILL_STATE_DIR")
        return cls(
            root=root if root is not None else find_root(Path.cwd()),
            state_dir=Path(state) if state else None,
            port_offset=offset,
            database_url=env.get("DATABASE_URL") or None,
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            redis_url=env.get("REDIS_URL") or None,
        )

    @property
    def run_dir(self) -> Path:
        """The directory holding one run file per started service."""
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        """The directory holding each service's stdout and stderr."""
        return self.state_dir / "logs"

    def port(self, spec: ServiceSpec) -> int:
        """The port a service listens on in this lab."""
        port = spec.port + self.port_offset
        if not 0 < port < 65536:
            raise LabError(
                f"{spec.name}: port {spec.port} + DRILL_PORT_OFFSET {self.port_offset} = {port} "
                "is not a valid port; choose a smaller offset"
            )
        return port

    def url(self, spec: ServiceSpec) -> str:
        """The base URL a service answers on in this lab."""
        return f"http://{HOST}:{self.port(spec)}"


def find_root(start: Path) -> Path:
    """The nearest directory at or above start holding scenarios.yaml and services/, else start."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / "scenarios.yaml").is_file() and (directory / "services").is_dir():
            return directory
    return start


def endpoints(config: LabConfig) -> dict[str, str]:
    """Each service's base URL: lab.json, else its port in this lab; DRILL_<NAME>_URL overrides."""
    urls = {name: config.url(spec) for name, spec in SERVICES.items()}
    document = _read_json(config.state_dir / LAB_FILE)
    recorded = document.get("services") if isinstance(document, dict) else None
    if isinstance(recorded, dict):
        urls.update({str(k): v for k, v in recorded.items() if isinstance(v, str)})
    for name in urls:
        override = os.environ.get(f"DRILL_{name.upper().replace('-', '_')}_URL")
        if override:
            urls[name] = override.rstrip("/")
    return urls


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
            record = _read_record(recorded[name]) if name in recorded else None
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


@dataclass(frozen=True)
class _RunRecord:
    """What a run file says about one started service."""

    name: str
    pid: int
    port: int
    url: str
    app: str  # what in its command line marks the process as the one drill started
    root: str
    started_at: str
    ready_path: str = READY_PATH


@dataclass
class _Pending:
    """A service this call waits for: its record, and its process when this call started it."""

    record: _RunRecord
    process: subprocess.Popen[bytes] | None
    log_path: Path
    log_offset: int


# Processes started by this interpreter. Holding them lets us reap them (no zombies that look
# alive to kill(pid, 0)) and keeps Popen.__del__ from warning that they still run.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spec(name: str) -> ServiceSpec | None:
    return PROMETHEUS if name == PROMETHEUS.name else SERVICES.get(name)


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


@contextlib.contextmanager
def _locked(config: LabConfig) -> Iterator[None]:
    # Two `drill up`s at once would both see a service as stopped and race for its port.
    config.run_dir.mkdir(parents=True, exist_ok=True)
    with open(config.run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
            record = _read_record(run_file) if run_file.exists() else None
            if record is not None and _owned(record):
                ready, _ = _probe(client, record.url + record.ready_path)
                if ready:
                    results[name] = ServiceStatus(
                        name, record.url, record.pid, True, True, "already running"
                    )
                else:
                    # Not ours to kill: it may be mid-way through a drill; wait for it instead.
                    log_path = config.log_dir / f"{name}.log"
                    waiting.append(_Pending(record, None, log_path, _size(log_path)))
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
                _stop(pending.record.pid)
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
    url = config.url(spec)
    if spec is PROMETHEUS:
        command, env = _prometheus_command(config), dict(os.environ)
        marker = str(_prometheus_config_file(config))
    else:
        command = machine.pinned(uvicorn_command(spec, HOST, port, config.root))
        marker, env = spec.app, child_env(config, spec)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.log_dir / f"{spec.name}.log"
    log_offset = _size(log_path)
    try:
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                cwd=config.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C in the terminal doesn't reach it, and down can
                # signal the whole group.
                start_new_session=True,
            )
    except OSError as exc:
        raise LabError(f"{spec.name}: could not start {command[0]}: {exc}") from None
    _CHILDREN[process.pid] = process
    record = _RunRecord(
        name=spec.name,
        pid=process.pid,
        port=port,
        url=url,
        app=marker,
        root=str(config.root),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ready_path=spec.ready_path,
    )
    payload = {k: v for k, v in asdict(record).items() if k != "name"}
    _write_json(config.run_dir / f"{spec.name}.json", payload)
    return _Pending(record, process, log_path, log_offset)


def uvicorn_command(spec: ServiceSpec, host: str, port: int, root: Path) -> list[str]:
    """The uvicorn command line of a lab service (native lab and `drill serve` alike)."""
    return [
        sys.executable, "-m", "uvicorn", spec.app, "--factory",
        "--host", host, "--port", str(port),
        # The tree under root must win over an installed `services`: tests patch a copy, and
        # compose bind-mounts the checkout's services/ so a fix plus a restart runs it.
        "--app-dir", str(root),
        "--no-access-log", "--log-level", "warning",
        # A stuck service never finishes its requests; without a bound, stopping it
        # waits out STOP_TIMEOUT_S and ends in SIGKILL.
        "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip


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


def child_env(config: LabConfig, spec: ServiceSpec) -> dict[str, str]:
    """A service's environment in this lab: state dir, endpoints, its own env and peer URLs."""
    env = dict(os.environ)
    env["DRILL_STATE_DIR"] = str(config.state_dir)
    env["OTEL_SERVICE_NAME"] = spec.name
    # Line-by-line logs, so `tail -f` and the failure tail see what the service said last.
    env["PYTHONUNBUFFERED"] = "1"
    # The config is the source of truth: a stray DATABASE_URL in the shell must not turn a
    # SQLite lab into a Postgres one, nor an unset endpoint export traces somewhere.
    for key, value in (
        ("DATABASE_URL", config.database_url),
        ("REDIS_URL", config.redis_url),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", config.otlp_endpoint),
    ):
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    env.update(spec.env)
    for variable, peer in spec.peers.items():
        env[variable] = config.url(SERVICES[peer])
    return env


def _await_ready(client: httpx.Client, pending: list[_Pending], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    remaining = list(pending)
    while remaining:
        for item in list(remaining):
            record = item.record
            code = item.process.poll() if item.process is not None else None
            if code is not None or (item.process is None and not _alive(record.pid)):
                how = f"exited with code {code}" if code is not None else "exited"
                raise LabError(
                    f"{record.name} {how} before it was ready. "
                    f"{_tail_text(item.log_path, item.log_offset)}\n"
                    f"Fix the error above, then run `drill up --native` again."
                )
            ready, answer = _probe(client, record.url + record.ready_path)
            if ready:
                remaining.remove(item)
            elif time.monotonic() >= deadline:
                raise LabError(
                    f"{record.name} did not answer {record.url}{record.ready_path} with 200 within "
                    f"{timeout:g} s (last answer: {answer}). "
                    f"{_tail_text(item.log_path, item.log_offset)}\n"
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
        record = _read_record(path)
        if record is None:
            log.warning("%s: unreadable run file %s removed", name, path)
        elif _owned(record):
            _stop(record.pid)
            stopped.append(name)
        elif _alive(record.pid):
            log.warning("%s: pid %d now runs another program; left it alone", name, record.pid)
        path.unlink(missing_ok=True)
    _write_lab_file(config)
    return stopped


def _stop(pid: int) -> None:
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        _alive(pid)  # reaps it if it was our child
        return
    # start_new_session made the service its group's leader; any other group is not ours.
    _signal(pid, signal.SIGTERM, group)
    if _wait_gone(pid, STOP_TIMEOUT_S):
        return
    log.warning("pid %d ignored SIGTERM for %g s; sending SIGKILL", pid, STOP_TIMEOUT_S)
    _signal(pid, signal.SIGKILL, group)
    if not _wait_gone(pid, 5.0):
        raise LabError(f"pid {pid} survived SIGKILL; check it with `ps -o pid,stat,cmd {pid}`")


def _signal(pid: int, signum: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise LabError(
            f"not allowed to stop pid {pid}; it belongs to another user, so stop it as that "
            f"user (`sudo kill {pid}`)"
        ) from None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(pid, 0) until its parent reaps it, yet it serves nothing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    return not fields or fields[0] != "Z"


def _owned(record: _RunRecord) -> bool:
    if not _alive(record.pid):
        return False
    # Our own unreaped child cannot have had its pid reused, and right after fork its cmdline
    # is still ours rather than uvicorn's.
    if record.pid in _CHILDREN:
        return True
    # The pid may have been reused since the run file was written: only a process whose
    # command line names the recorded app (or, for Prometheus, its config file) is ours.
    command = _cmdline(record.pid)
    return command is not None and record.app in command


def _cmdline(pid: int) -> str | None:
    proc = Path("/proc")
    if proc.is_dir():
        try:
            return (
                (proc / str(pid) / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            return None
    # No /proc (macOS): ps reports the same command line.
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a just-stopped service's TIME_WAIT sockets must not block its restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


_LAB_PORTS_FROM, _LAB_PORTS_BELOW = 10_000, 32_768


def free_port_offset() -> int:
    """A DRILL_PORT_OFFSET that puts every service on a port free right now (tests, benchmarks).

    The range is drawn below Linux's ephemeral ports (32768 and up), where every outgoing
    connection takes its local port: a lab port chosen there was taken by some client socket
    between this check and the service's bind ("address already in use") when labs ran side
    by side.
    """
    # The runner's API shifts with the lab too.
    ports = [spec.port for spec in (*SERVICES.values(), PROMETHEUS)] + [prometheus.RUNNER_PORT]
    low, high = min(ports), max(ports)
    draw = random.Random()
    for _ in range(200):
        base = draw.randrange(_LAB_PORTS_FROM, _LAB_PORTS_BELOW - (high - low))
        if all(port_free(base - low + p) for p in ports):
            return base - low
    raise LabError("no free range of ports found for the lab; stop other labs and retry")


def _write_lab_file(config: LabConfig) -> None:
    services: dict[str, str] = {}
    for path in sorted(config.run_dir.glob("*.json")):
        record = _read_record(path)
        if record is not None and _owned(record):
            services[record.name] = record.url
    lab_file = config.state_dir / LAB_FILE
    if services:
        _write_json(lab_file, {"services": services})
    else:
        lab_file.unlink(missing_ok=True)


def _read_record(path: Path) -> _RunRecord | None:
    data = _read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        record = _RunRecord(
            name=path.stem,
            pid=int(data["pid"]),
            port=int(data["port"]),
            url=str(data["url"]),
            app=str(data["app"]),
            root=str(data["root"]),
            started_at=str(data["started_at"]),
            ready_path=str(data.get("ready_path", READY_PATH)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    # kill(0) and kill(-1) signal whole groups, and pid 1 is init: never take those from a file.
    return record if record.pid > 1 else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    # Readers (status, verify, another drill) see the old file or the new one, never half.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tail_text(path: Path, offset: int) -> str:
    lines = _tail(path, offset)
    if not lines:
        return f"Its log {path} is empty."
    body = "\n".join(f"  {line}" for line in lines)
    return f"Last {len(lines)} lines of {path}:\n{body}"


def _tail(path: Path, offset: int, count: int = LOG_TAIL_LINES) -> list[str]:
    # Only what this start wrote: the log is appended to across runs.
    try:
        with open(path, "rb") as handle:
            handle.seek(max(offset, _size(path) - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-count:]
