"""`drill preflight`: the evening before the workshop, is this machine ready for the day?

Each check says what it found and, when something is wrong, what to do about it in plain words.
The checks, in the order a problem should be fixed:

- Python and the lab's install (the load generator verify runs);
- Docker and Compose v2, and the images `compose.yaml` names (not with `--native`);
- the lab's ports are free (or answered by this lab);
- memory for the lab;
- Postgres and Redis for the native lab (the day's figures were measured on Postgres; the
  feed's fix caches in Redis);
- with `--offline`: every locked wheel is in uv's cache and every image is present, for a room
  without internet;
- the native lab comes up healthy, and a short `drill verify --baseline` of each drill passes:
  the machine is fast enough and nothing in the lab is broken.

A check is `ok`, `warn` (the day can go ahead; the detail says what is weaker), `fail` (fix it
before the day) or `skip` (not asked for, or an earlier failure decides it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml

from drill import native, prometheus
from drill.compose import image_present

Status = Literal["ok", "warn", "fail", "skip"]
PYTHON_MIN = (3, 11)
# The compose lab's memory limits add up to 1,424 MiB (compose.yaml); the native lab's
# processes peaked at about 800 MiB with Prometheus. Each with room for the browser and Locust.
MEMORY_NEED_MIB = {"compose": 2048, "native": 1280}
# Published ports of the compose lab that the native table does not list.
COMPOSE_ONLY_PORTS = {3000: "grafana", 16686: "jaeger", 8089: "locust"}
VERIFY_SECONDS = 20
COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Options:
    """What the instructor asked to check."""

    native_only: bool = False
    offline: bool = False
    lab: bool = True
    verify_seconds: int = VERIFY_SECONDS


def _run(
    command: Sequence[str],
    timeout: float = COMMAND_TIMEOUT_S,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str] | None:
    """A command's result, or None when it is not installed or does not finish in time."""
    try:
        return subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd,
            env=env,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def _failure(
    done: subprocess.CompletedProcess[str] | None,
    unfinished: str,
    said: Callable[[subprocess.CompletedProcess[str]], str] = _last_line,
) -> str | None:
    """Why a command failed: what it said (its last line), or `unfinished` when it is not
    installed or did not finish in time; None when it succeeded."""
    if done is None:
        return unfinished
    return said(done) if done.returncode != 0 else None


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's own error line (`error: ...`, or typer's usage error), not a box's border."""
    text = f"{done.stderr}\n{done.stdout}"
    for line in text.splitlines():
        stripped = line.strip(" │╭╮╰╯─")
        if stripped.startswith(("error:", "Error", "Invalid", "No such", "Missing")):
            return stripped
    return _last_line(done)


# -- the machine --------------------------------------------------------------------------------


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < PYTHON_MIN:
        return Check(
            "python", "fail", f"Python {version} at {sys.executable}",
            "install Python 3.11 or later, then scripts/bootstrap",
        )  # fmt: skip
    if importlib.util.find_spec("locust") is None:
        return Check(
            "python", "fail", f"Python {version}; Locust is not installed (verify runs it)",
            "scripts/bootstrap",
        )  # fmt: skip
    return Check("python", "ok", f"Python {version}, the lab and Locust installed")


def check_docker() -> Check:
    if shutil.which("docker") is None:
        return Check(
            "docker", "fail", "no docker command",
            "install Docker Engine with the compose plugin, or run the day on the native lab "
            "(drill preflight --native)",
        )  # fmt: skip
    server = _run(["docker", "version", "--format", "{{.Server.Version}}"])
    if server is None or server.returncode != 0:
        said = _last_line(server) if server else "no answer"
        return Check(
            "docker", "fail", f"the Docker daemon does not answer ({said})",
            "start Docker (systemctl start docker) and make sure this user may use it",
        )  # fmt: skip
    compose = _run(["docker", "compose", "version", "--short"])
    if compose is None or compose.returncode != 0:
        return Check(
            "docker", "fail", f"Docker {server.stdout.strip()}, but no `docker compose`",
            "install the Compose v2 plugin (Debian: docker-compose-plugin or docker-compose-v2)",
        )  # fmt: skip
    short = compose.stdout.strip().lstrip("v")
    if not short.split(".")[0].isdigit() or int(short.split(".")[0]) < 2:
        return Check("docker", "fail", f"Compose {short} is older than v2", "install Compose v2")
    return Check("docker", "ok", f"Docker {server.stdout.strip()}, Compose {short}")


def compose_images(root: Path) -> dict[str, str]:
    """Each image compose.yaml names, with the first service that uses it."""
    document = yaml.safe_load((root / "compose.yaml").read_text()) or {}
    images: dict[str, str] = {}
    for service, spec in (document.get("services") or {}).items():
        image = (spec or {}).get("image")
        if isinstance(image, str):
            images.setdefault(image, service)
    return images


def check_images(root: Path, offline: bool) -> Check:
    missing = []
    for image, service in compose_images(root).items():
        if not image_present(image):
            missing.append((image, service))
    if not missing:
        return Check("images", "ok", "every image compose.yaml names is present")
    names = ", ".join(image for image, _ in missing)
    lab_image = [image for image, service in missing if image.startswith("drill-lab")]
    fix = []
    if lab_image:
        fix.append("docker compose build (the lab's image)")
    if len(missing) > len(lab_image):
        fix.append(
            "docker compose pull while online, then docker save the images to carry them into "
            "the room (docker load -i there)"
        )
    # Online, compose builds and pulls what is missing at `up`; a room without internet cannot.
    return Check("images", "fail" if offline else "warn", f"missing: {names}", "; ".join(fix))


def lab_ports(config: native.LabConfig, compose: bool) -> dict[int, str]:
    ports = {config.port(spec): name for name, spec in native.SERVICES.items()}
    ports[config.port(native.PROMETHEUS)] = native.PROMETHEUS.name
    ports[prometheus.RUNNER_PORT + config.port_offset] = "the program runner"
    if compose:
        ports.update(COMPOSE_ONLY_PORTS)
    return ports


def _answers(port: int) -> bool:
    """Whether something on this port speaks HTTP as a lab service does (/readyz or /-/ready)."""
    import httpx

    for path in (native.READY_PATH, prometheus.READY_PATH, "/"):
        try:
            if httpx.get(f"http://{native.HOST}:{port}{path}", timeout=1.0).status_code < 500:
                return True
        except httpx.HTTPError:
            continue
    return False


def check_ports(config: native.LabConfig, compose: bool) -> Check:
    """The lab's ports are free; a busy one is fine when this lab (either kind) answers there."""
    running = {row.url for row in native.status(config) if row.ready}
    busy = []
    for port, owner in sorted(lab_ports(config, compose).items()):
        if native.port_free(port):
            continue
        if f"http://{native.HOST}:{port}" in running or _answers(port):
            continue  # the lab itself, already up
        busy.append(f"{port} ({owner})")
    if busy:
        return Check(
            "ports", "fail", f"in use by something else: {', '.join(busy)}",
            "stop what holds them (ss -ltnp shows it), or set DRILL_PORT_OFFSET for the "
            "native lab",
        )  # fmt: skip
    return Check("ports", "ok", f"{len(lab_ports(config, compose))} lab ports free or the lab's")


def _available_mib() -> int:
    import psutil

    return int(psutil.virtual_memory().available // (1024 * 1024))


def check_memory(compose: bool, available_mib: Callable[[], int] = _available_mib) -> Check:
    need = MEMORY_NEED_MIB["compose" if compose else "native"]
    have = available_mib()
    if have < need:
        return Check(
            "memory", "fail", f"{have:,} MiB available, the lab needs about {need:,} MiB",
            "close other programs (browsers with many tabs, other containers) before the day",
        )  # fmt: skip
    return Check("memory", "ok", f"{have:,} MiB available (the lab needs about {need:,} MiB)")


def _reach(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _cannot_connect(name: str, host: str, port: int, said: str, fix: str) -> Check:
    """A server the native lab needs does not take a connection."""
    return Check(name, "fail", f"cannot connect to {host}:{port}: {said}", fix)


def check_postgres(config: native.LabConfig) -> Check:
    url = config.database_url
    if not url:
        return Check(
            "postgres", "warn", "DATABASE_URL is not set: the native lab uses SQLite",
            "the day's figures were measured on Postgres: "
            "export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/drill",
        )  # fmt: skip
    if not url.startswith("postgresql"):
        return Check("postgres", "warn", f"DATABASE_URL is not Postgres ({url.split(':')[0]})")
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as connection:
            version = connection.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        host, port = _reach(url, 5432)
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _cannot_connect(
            "postgres", host, port, said,
            "start Postgres (pg_ctlcluster 15 main start) or fix DATABASE_URL; the database "
            "must exist (createdb -h 127.0.0.1 -U postgres drill)",
        )  # fmt: skip
    return Check("postgres", "ok", f"Postgres {version[0] if version else '?'} answers")


def check_redis(config: native.LabConfig) -> Check:
    url = config.redis_url or "redis://127.0.0.1:6379/0"
    host, port = _reach(url, 6379)
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        return _cannot_connect(
            "redis", host, port, str(exc.strerror or exc),
            "start Redis (redis-server --daemonize yes) or set REDIS_URL: the feed's fix "
            "caches in it",
        )  # fmt: skip
    if not answer.startswith((b"+PONG", b"-NOAUTH")):
        return Check("redis", "fail", f"{host}:{port} does not answer as Redis: {answer[:20]!r}")
    return Check("redis", "ok", f"Redis answers at {host}:{port}")


def check_offline_wheels(root: Path) -> Check:
    """Every package uv.lock names for the host's install is in uv's cache (no network)."""
    uv = root / ".venv-uv" / "bin" / "uv"
    if not uv.is_file():
        return Check("wheels", "fail", "uv is not installed here", "scripts/bootstrap (online)")
    done = _run(
        [str(uv), "sync", "--locked", "--offline", "--dry-run", "--extra", "fixes",
         "--extra", "load"],
        cwd=root, timeout=120,
    )  # fmt: skip
    said = _failure(done, "uv did not finish")
    if said is not None:
        return Check(
            "wheels", "fail", f"not everything uv.lock needs is cached: {said}",
            "run scripts/bootstrap once while online (it fills uv's cache)",
        )  # fmt: skip
    return Check("wheels", "ok", "every locked package is in uv's cache")


# -- the lab itself -----------------------------------------------------------------------------


def _drill(
    config: native.LabConfig, *args: str, timeout: float
) -> subprocess.CompletedProcess[str] | None:
    command = [sys.executable, "-m", "drill.cli", *args, "--root", str(config.root)]
    env = {**os.environ, "COLUMNS": "200"}
    return _run(command, timeout=timeout, cwd=config.root, env=env)


def lab_checks(config: native.LabConfig, seconds: int) -> Iterator[Check]:
    """Bring the native lab up (unless it runs), verify each drill's clean baseline, and leave
    the lab as it was found."""
    from drill.scenarios import load_program

    already = [row for row in native.status(config) if row.running]
    started = False
    if not already:
        up = _drill(config, "up", "--native", timeout=180)
        said = _failure(up, "timeout", _error_line)
        if said is not None:
            yield Check(
                "lab", "fail", f"drill up --native failed: {said}",
                "read .drill/logs/<service>.log, fix, and run drill preflight again",
            )  # fmt: skip
            return
        started = True
    try:
        rows = native.status(config)
        unready = [row.name for row in rows if row.name in native.SERVICES and not row.ready]
        if unready:
            yield Check(
                "lab", "fail", f"not ready: {', '.join(unready)}",
                "drill status and .drill/logs/<service>.log say why",
            )  # fmt: skip
            return
        how = "started for this check" if started else "already running"
        yield Check("lab", "ok", f"{len(native.SERVICES)} services ready ({how})")
        for scenario in load_program(config.root / "scenarios.yaml").scenarios:
            yield verify_baseline(config, scenario, seconds)
    finally:
        if started:
            _drill(config, "down", timeout=60)


def verify_baseline(config: native.LabConfig, scenario: str, seconds: int) -> Check:
    name = f"verify {scenario}"
    with tempfile.TemporaryDirectory(prefix="drill-preflight-") as scratch:
        out = Path(scratch) / "result.json"
        done = _drill(
            config, "verify", scenario, "--baseline", "--duration", str(seconds),
            "--json", str(out), timeout=seconds + 300,
        )  # fmt: skip
        try:
            result = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            result = None
    if done is None:
        return Check(name, "fail", "drill verify did not finish", "drill verify by hand says why")
    if done.returncode == 0 and isinstance(result, dict):
        return Check(name, "ok", f"clean baseline passed ({seconds} s of load)")
    if done.returncode == 1 and isinstance(result, dict):
        missed = [c["name"] for c in result.get("checks", []) if not c.get("passed")]
        return Check(
            name, "fail", f"the clean baseline missed: {', '.join(missed) or '?'}",
            "this machine may be slower than the slowest supported one (two vCPUs), or busy: "
            f"close other programs and run drill verify {scenario} --baseline to see the table",
        )  # fmt: skip
    return Check(name, "fail", f"could not run: {_error_line(done)}", "drill status, then retry")


def run(config: native.LabConfig, options: Options) -> Iterator[Check]:
    """Every check, in order; the lab's own checks only when nothing before them failed."""
    compose = not options.native_only
    checks: list[Check] = [check_python()]
    yield checks[-1]
    if compose:
        checks.append(check_docker())
        yield checks[-1]
        if checks[-1].status == "ok":
            checks.append(check_images(config.root, options.offline))
        else:
            checks.append(Check("images", "skip", "no working Docker to ask"))
        yield checks[-1]
    for check in (check_ports(config, compose), check_memory(compose)):
        checks.append(check)
        yield check
    for check in (check_postgres(config), check_redis(config)):
        checks.append(check)
        yield check
    if options.offline:
        checks.append(check_offline_wheels(config.root))
        yield checks[-1]
    if not options.lab:
        yield Check("lab", "skip", "--no-lab: the lab was not started")
        return
    failed = [c.name for c in checks if c.status == "fail" and c.name not in ("docker", "images")]
    if failed:
        yield Check("lab", "skip", f"fix {', '.join(failed)} first")
        return
    yield from lab_checks(config, options.verify_seconds)


def passed(checks: Sequence[Check]) -> bool:
    return all(check.status != "fail" for check in checks)


def as_dict(check: Check) -> dict[str, str]:
    return {"name": check.name, "status": check.status, "detail": check.detail, "fix": check.fix}
