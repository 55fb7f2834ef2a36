"""Process control for the native lab: start in its own session, signal, wait, own, ports."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from drill.lab.model import HOST, PROMETHEUS, SERVICES, LabError, ServiceSpec
from drill.prometheus import RUNNER_PORT

log = logging.getLogger("drill.native")

STOP_TIMEOUT_S = 10.0

# Processes started by this interpreter. Holding them lets us reap them (no zombies that look
# alive to kill(pid, 0)) and keeps Popen.__del__ from warning that they still run.
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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


def start(
    name: str, command: Sequence[str], cwd: Path, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start command in its own session, appending its output to log_path; remember it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C in the terminal doesn't reach it, and stop() can
                # signal the whole group.
                start_new_session=True,
            )
    except OSError as exc:
        raise LabError(f"{name}: could not start {command[0]}: {exc}") from None
    CHILDREN[process.pid] = process
    return process


def stop(pid: int) -> None:
    """SIGTERM the process (its group, when it leads one), then SIGKILL after STOP_TIMEOUT_S."""
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        alive(pid)  # reaps it if it was our child
        return
    # start_new_session made the service its group's leader; any other group is not ours.
    send(pid, signal.SIGTERM, group)
    if wait_gone(pid, STOP_TIMEOUT_S):
        return
    log.warning("pid %d ignored SIGTERM for %g s; sending SIGKILL", pid, STOP_TIMEOUT_S)
    send(pid, signal.SIGKILL, group)
    if not wait_gone(pid, 5.0):
        raise LabError(f"pid {pid} survived SIGKILL; check it with `ps -o pid,stat,cmd {pid}`")


def send(pid: int, signum: signal.Signals, group: bool | None = None) -> None:
    """Signal pid, or its whole group when it leads one (group=None: ask); gone is fine."""
    try:
        if group is None:
            group = os.getpgid(pid) == pid
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


def end(process: subprocess.Popen[Any], timeout: float, signum: int = signal.SIGTERM) -> int:
    """Ask a child of ours to stop with signum, SIGKILL it after timeout s; its exit code."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether the process ended within timeout seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    """Whether pid runs: reaped if it is our child, and a zombie counts as gone."""
    child = CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del CHILDREN[pid]
        return False
    try:
        # A zombie exists until its parent reaps it, yet it serves nothing.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def owned(pid: int, marker: str) -> bool:
    """Whether pid runs and is the process drill started: its command line names marker."""
    if not alive(pid):
        return False
    # Our own unreaped child cannot have had its pid reused, and right after fork its cmdline
    # is still ours rather than uvicorn's.
    if pid in CHILDREN:
        return True
    # The pid may have been reused since the run file was written: only a process whose
    # command line names the recorded app (or, for Prometheus, its config file) is ours.
    command = cmdline(pid)
    return command is not None and marker in command


def cmdline(pid: int) -> str | None:
    """The process's command line, its arguments joined by spaces; None when it is gone."""
    try:
        return " ".join(psutil.Process(pid).cmdline()) or None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def port_free(port: int) -> bool:
    """Whether a service could bind port on HOST right now."""
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
    ports = [spec.port for spec in (*SERVICES.values(), PROMETHEUS)] + [RUNNER_PORT]
    low, high = min(ports), max(ports)
    draw = random.Random()
    for _ in range(200):
        base = draw.randrange(_LAB_PORTS_FROM, _LAB_PORTS_BELOW - (high - low))
        if all(port_free(base - low + p) for p in ports):
            return base - low
    raise LabError("no free range of ports found for the lab; stop other labs and retry")
