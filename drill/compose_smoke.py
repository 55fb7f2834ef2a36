"""The compose lab brought up for real, checked as a new user would, and torn down.

`scripts/compose-smoke` runs this (CI too). In order:

1. A Docker engine: `docker info`, or a `dockerd` started here (installed from Debian's
   `docker.io` first when the machine has none and we are root: a fresh CI machine).
2. Images. Each image compose.yaml names is used when present, pulled when a registry
   answers, and otherwise built here:
   - the lab image (`docker compose build`), from the official Python image, or where that
     cannot be pulled from a local Debian base made with debootstrap (`DRILL_BASE_IMAGE`, as
     the README says);
   - postgres, redis and prometheus from Debian's packages (scripts/standins), under the
     names compose uses;
   - grafana and jaeger have no Debian package: without their images the lab starts
     without them (compose.yaml makes both optional), and the smoke says so.
3. `docker compose up --detach --wait`, timing when each container turns healthy.
4. Checks: every container healthy; every published port answers on 127.0.0.1; Prometheus
   scrapes every lab target; a flag flipped on the host (`drill flags set`) acts inside a
   container; a short `drill verify --baseline` of each drill passes against the compose lab.
5. `docker compose down --volumes`, then a table: time to healthy, memory now and at peak,
   and the limit, per container.

The lab's flag state lives in a directory of its own for the run (DRILL_STATE_DIR), so a
developer's `.drill/` is left alone. The published ports are the lab's own: a lab already
running here (native or compose) must be stopped first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from drill import compose, preflight
from drill.lab.model import LabConfig, find_root

BASE_IMAGE = "drill-base:bookworm"
OFFICIAL_BASE = "python:3.11-slim"
LAB_IMAGE = "drill-lab:latest"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the base holds beyond debootstrap's minimal system: what the lab image's build needs.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The public images that a Debian-package stand-in replaces (scripts/standins/<name>.Dockerfile).
STANDINS = {"postgres": "postgres", "redis": "redis", "prometheus": "prometheus"}
# Services the lab can start without: nothing waits on them (compose.yaml).
OPTIONAL = ("grafana", "jaeger")
PULL_TIMEOUT_S = 120
UP_TIMEOUT_S = 600
FLAG = "ledger.fx_conversion"
FLAG_WAIT_S = 10.0
DOCKERD_LOG = Path("/var/log/drill-dockerd.log")


class SmokeError(Exception):
    """A step that cannot go on; the message says what failed and what to look at."""


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"     {text}", flush=True)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def _run(
    command: Sequence[str],
    *,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError:
        raise SmokeError(f"{command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise SmokeError(f"`{' '.join(command)}` did not finish within {timeout:g} s") from None


def _tail(done: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    return "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-lines:])


def _must(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise SmokeError(f"{what} failed (exit {done.returncode}):\n{_tail(done)}")
    return done


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise SmokeError(f"{', '.join(packages)} missing, and only root may install them")
    print(f"     installing {', '.join(packages)} from Debian's packages", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if _run(install, env=env).returncode != 0:
        # The package lists may be missing or stale on a fresh machine.
        _must(_run(["apt-get", "update", "-qq"], env=env), "apt-get update")
        _must(_run(install, env=env), f"apt-get install {' '.join(packages)}")


# -- 1. the engine ------------------------------------------------------------------------------


def ensure_engine(report: Report) -> None:
    """A Docker engine that answers, started here when the machine has none running."""
    if compose.engine_answers():
        report.note("Docker engine: already running")
        return
    if shutil.which("dockerd") is None:
        _apt_install("docker.io")
    print(f"     starting dockerd (log: {DOCKERD_LOG})", flush=True)
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not compose.engine_answers():
        if time.monotonic() > deadline:
            raise SmokeError(f"dockerd did not answer within 60 s; see {DOCKERD_LOG}")
        time.sleep(0.5)
    report.note("Docker engine: dockerd started for this run")


# -- 2. the images ------------------------------------------------------------------------------


def pulled(image: str) -> bool:
    try:
        return _run(["docker", "pull", "--quiet", image], timeout=PULL_TIMEOUT_S).returncode == 0
    except SmokeError:
        return False


def build_base(report: Report) -> None:
    """drill-base:bookworm: Debian bookworm from debootstrap, with python3 and its venv, and
    this machine's certificate authorities (a network that inspects TLS has its own)."""
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drill-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        _must(
            _run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 "bookworm", str(rootfs), DEBIAN_MIRROR],
                timeout=1200,
            ),
            "debootstrap",
        )  # fmt: skip
        # Daemons that packages install are not started at build time (no init in a build).
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        local_cas = Path("/usr/local/share/ca-certificates")
        if local_cas.is_dir() and any(local_cas.iterdir()):
            shutil.copytree(
                local_cas, rootfs / "usr/local/share/ca-certificates", dirs_exist_ok=True
            )
            _must(_run(["chroot", str(rootfs), "update-ca-certificates"]), "update-ca-certificates")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*.deb"):
                entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        bundle = "/etc/ssl/certs/ca-certificates.crt"
        imported = subprocess.run(
            ["docker", "import",
             "--change", f"ENV SSL_CERT_FILE={bundle} PIP_CERT={bundle} LANG=C.UTF-8",
             "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
            stdin=tar.stdout, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
        _must(imported, "docker import of the debootstrapped base")
    report.note(f"built {BASE_IMAGE} with debootstrap in {time.monotonic() - began:.0f} s")


def ensure_base(report: Report) -> str:
    """The base the lab image builds FROM: the official image, or the local Debian one."""
    if compose.image_present(OFFICIAL_BASE) or pulled(OFFICIAL_BASE):
        return OFFICIAL_BASE
    if not compose.image_present(BASE_IMAGE):
        build_base(report)
    else:
        report.note(f"{BASE_IMAGE} (local Debian base): present")
    return BASE_IMAGE


def ensure_images(config: LabConfig, report: Report) -> list[str]:
    """Every image compose needs, present, pulled or built; the services to leave out."""
    base: str | None = None
    absent: list[str] = []
    for image, service in preflight.compose_images(config.root).items():
        if image == LAB_IMAGE or compose.image_present(image):
            continue
        if pulled(image):
            report.note(f"{image}: pulled")
        elif service in STANDINS:
            base = base or ensure_base(report)
            began = time.monotonic()
            standins = config.root / "scripts" / "standins"
            _must(
                _run(
                    ["docker", "build", "--quiet", "--tag", image,
                     "--build-arg", f"BASE_IMAGE={base}",
                     "--file", str(standins / f"{STANDINS[service]}.Dockerfile"), str(standins)],
                    timeout=1200,
                ),
                f"building the {service} stand-in",
            )  # fmt: skip
            report.note(
                f"{image}: no registry; built from Debian's packages in "
                f"{time.monotonic() - began:.0f} s"
            )
        elif service in OPTIONAL:
            absent.append(service)
            report.note(f"{image}: no registry and no stand-in; the lab starts without {service}")
        else:
            raise SmokeError(f"{image} ({service}) is not here and cannot be pulled")
    began = time.monotonic()
    env = dict(os.environ)
    if not compose.image_present(OFFICIAL_BASE) and not pulled(OFFICIAL_BASE):
        env["DRILL_BASE_IMAGE"] = base or ensure_base(report)
    done = _run([*compose_base(config, []), "build"], env=env, timeout=1800)
    _must(done, "docker compose build")
    report.note(
        f"{LAB_IMAGE}: built in {time.monotonic() - began:.0f} s "
        f"from {env.get('DRILL_BASE_IMAGE', OFFICIAL_BASE)}"
    )
    return absent


# -- 3. up --------------------------------------------------------------------------------------


def compose_base(config: LabConfig, overrides: Sequence[Path]) -> list[str]:
    command = [
        *compose.compose_command(), "--project-directory", str(config.root),
        "-f", str(config.root / compose.COMPOSE_FILE),
    ]  # fmt: skip
    for path in overrides:
        command += ["-f", str(path)]
    return command


def without(services: Sequence[str]) -> dict[str, object]:
    """A compose override that leaves services out: a profile nobody asks for."""
    return {"services": {name: {"profiles": ["absent"]} for name in services}}


def services(config: LabConfig, overrides: Sequence[Path]) -> list[str]:
    """The services `up` starts, as compose resolves the files."""
    done = _run([*compose_base(config, overrides), "config", "--services"], timeout=60)
    return _must(done, "docker compose config").stdout.split()


def containers(config: LabConfig, overrides: Sequence[Path]) -> list[dict[str, object]]:
    done = _run([*compose_base(config, overrides), "ps", "--all", "--format", "json"], timeout=60)
    _must(done, "docker compose ps")
    text = done.stdout.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [row for row in rows if isinstance(row, dict)]


def up(config: LabConfig, overrides: Sequence[Path], env: dict[str, str]) -> dict[str, float]:
    """`up --detach --wait`; the seconds from its start until each container was healthy."""
    command = [*compose_base(config, overrides), "up", "--detach", "--wait",
               "--wait-timeout", str(UP_TIMEOUT_S)]  # fmt: skip
    began = time.monotonic()
    healthy: dict[str, float] = {}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True)
    reader.start()
    while process.poll() is None:
        for row in containers(config, overrides):
            service = str(row.get("Service"))
            if row.get("Health") == "healthy" and service not in healthy:
                healthy[service] = time.monotonic() - began
        time.sleep(0.25)
    reader.join(timeout=5)
    if process.returncode != 0:
        raise SmokeError(
            f"docker compose up failed (exit {process.returncode}):\n" + "".join(output[-20:])
        )
    for row in containers(config, overrides):
        service = str(row.get("Service"))
        if row.get("Health") == "healthy" and service not in healthy:
            healthy[service] = time.monotonic() - began
    return healthy


# -- 4. the checks ------------------------------------------------------------------------------


def check_health(config: LabConfig, overrides: Sequence[Path], expected: Sequence[str],
                 report: Report) -> None:  # fmt: skip
    rows = {str(row.get("Service")): row for row in containers(config, overrides)}
    unhealthy = [
        f"{name} ({rows[name].get('State')}, {rows[name].get('Health') or 'no health'})"
        if name in rows else f"{name} (no container)"
        for name in expected
        if name not in rows or rows[name].get("Health") != "healthy"
    ]  # fmt: skip
    report.check(
        "healthy",
        not unhealthy,
        f"{len(expected) - len(unhealthy)}/{len(expected)} containers healthy"
        + (f"; not: {', '.join(unhealthy)}" if unhealthy else ""),
    )


def check_ports(config: LabConfig, overrides: Sequence[Path], report: Report) -> None:
    published: list[tuple[str, int]] = []
    for row in containers(config, overrides):
        for publisher in row.get("Publishers") or []:  # type: ignore[attr-defined]
            if isinstance(publisher, dict) and publisher.get("PublishedPort"):
                published.append((str(row.get("Service")), int(publisher["PublishedPort"])))
                if publisher.get("URL") not in ("127.0.0.1", None, ""):
                    report.check(
                        "ports", False,
                        f"{row.get('Service')} publishes {publisher['PublishedPort']} on "
                        f"{publisher.get('URL')}, not 127.0.0.1",
                    )  # fmt: skip
    silent = []
    with httpx.Client(timeout=5, trust_env=False) as client:
        for service, port in sorted(set(published), key=lambda p: p[1]):
            try:
                client.get(f"http://127.0.0.1:{port}/")
            except httpx.HTTPError as exc:
                silent.append(f"{service}:{port} ({type(exc).__name__})")
    ports = ", ".join(str(port) for _, port in sorted(set(published), key=lambda p: p[1]))
    report.check(
        "ports",
        not silent,
        f"{len(published) - len(silent)}/{len(published)} published ports answer on "
        f"127.0.0.1 ({ports})" + (f"; silent: {', '.join(silent)}" if silent else ""),
    )


def check_scrapes(report: Report, wait_s: float = 30) -> None:
    """Prometheus has scraped every lab target (its runner job is down without a runner)."""
    deadline = time.monotonic() + wait_s
    detail = "no answer"
    while True:
        try:
            targets = httpx.get(
                "http://127.0.0.1:9090/api/v1/targets", timeout=5, trust_env=False
            ).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            targets, detail = [], f"Prometheus did not answer ({type(exc).__name__})"
        lab = [t for t in targets if t.get("labels", {}).get("job") != "runner"]
        down = [f"{t['labels'].get('job')}/{t['labels'].get('instance')} ({t.get('lastError')})"
                for t in lab if t.get("health") != "up"]  # fmt: skip
        if lab and not down:
            report.check("scrapes", True, f"Prometheus scrapes {len(lab)}/{len(lab)} lab targets")
            return
        if lab:
            detail = f"{len(lab) - len(down)}/{len(lab)} lab targets up; down: {', '.join(down)}"
        if time.monotonic() > deadline:
            report.check("scrapes", False, detail)
            return
        time.sleep(1)


def _drill(config: LabConfig, env: dict[str, str], *args: str,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return _run([sys.executable, "-m", "drill.cli", *args, "--root", str(config.root)],
                env=env, cwd=config.root, timeout=timeout)  # fmt: skip


def _booked(client: httpx.Client, number: int) -> str:
    payment = {"account_id": f"smoke-{number}", "direction": "credit", "currency": "EUR",
               "amount": "10.00"}  # fmt: skip
    response = client.post("/transactions", json=payment)
    response.raise_for_status()
    return str(response.json()["currency"])


def check_flag_flip(config: LabConfig, env: dict[str, str], report: Report) -> None:
    """`drill flags set` on the host; a EUR payment to the ledger container is then booked in
    USD (conversion on) within FLAG_WAIT_S; and in EUR again after `drill flags reset`."""
    seen: list[str] = []
    with httpx.Client(base_url="http://127.0.0.1:8001", timeout=10, trust_env=False) as client:
        for args, want in (
            (("flags", "set", FLAG, "on"), "USD"),
            (("flags", "reset", FLAG), "EUR"),
        ):
            done = _drill(config, env, *args)
            flipped = time.monotonic()
            if done.returncode != 0:
                report.check("flag flip", False, f"drill {' '.join(args)}: {_tail(done, 3)}")
                return
            polls = 0
            while True:
                polls += 1
                booked = _booked(client, polls)
                if booked == want:
                    seen.append(f"{FLAG} {args[1]}: booked {want} after "
                                f"{time.monotonic() - flipped:.2f} s")  # fmt: skip
                    break
                if time.monotonic() - flipped > FLAG_WAIT_S:
                    report.check(
                        "flag flip", False,
                        f"drill {' '.join(args)} on the host, yet the ledger container still "
                        f"books {booked} after {FLAG_WAIT_S:g} s: can the containers read "
                        f"{env['DRILL_STATE_DIR']}?",
                    )  # fmt: skip
                    return
                time.sleep(0.05)
    report.check("flag flip", True, "; ".join(seen))


def check_verify(config: LabConfig, env: dict[str, str], seconds: int, report: Report) -> None:
    from drill.scenarios import load_program

    for scenario in load_program(config.root / "scenarios.yaml").scenarios:
        with tempfile.TemporaryDirectory(prefix="drill-smoke-") as scratch:
            out = Path(scratch) / "result.json"
            done = _drill(
                config, env, "verify", scenario, "--baseline", "--duration", str(seconds),
                "--json", str(out), timeout=seconds + 300,
            )  # fmt: skip
            try:
                result = json.loads(out.read_text())
            except (OSError, ValueError):
                result = {}
        if done.returncode == 0:
            shown = [f"{c['figure']} {c['value']:g}" for c in result.get("checks", [])
                     if c.get("kind") == "latency"]  # fmt: skip
            report.check(f"verify {scenario}", True,
                         f"clean baseline passed ({seconds} s; {', '.join(shown)})")  # fmt: skip
        else:
            missed = [f"{c['name']} ({c['figure']} {c['value']:g})"
                      for c in result.get("checks", []) if not c.get("passed")]  # fmt: skip
            report.check(
                f"verify {scenario}", False,
                f"exit {done.returncode}: " + ("; ".join(missed) or _tail(done, 5)),
            )  # fmt: skip


def measure_drill_load(config: LabConfig, env: dict[str, str], seconds: int) -> None:
    """Each drill as shipped with its triggers on: the load whose memory peaks size the limits.
    Its verdict is not the smoke's (the shipped code fails by design); only said."""
    from drill.scenarios import load_program

    for name, scenario in load_program(config.root / "scenarios.yaml").scenarios.items():
        done = _drill(config, env, "verify", name, "--duration", str(seconds),
                      timeout=seconds + 300)  # fmt: skip
        print(f"     drill load {name} ({seconds} s, triggers on): verify exit "
              f"{done.returncode}", flush=True)  # fmt: skip
        _drill(config, env, "restart", *scenario.services, timeout=180)


# -- 5. memory and teardown ---------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    now_mib: float
    peak_mib: float | None
    limit_mib: float | None


def _cgroup_dir(container_id: str) -> tuple[Path, bool] | None:
    """The container's memory cgroup, and whether it is cgroup v2."""
    for directory, v2 in (
        (Path("/sys/fs/cgroup/memory/docker") / container_id, False),  # v1, cgroupfs driver
        (Path("/sys/fs/cgroup/memory/system.slice") / f"docker-{container_id}.scope", False),
        (Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope", True),
        (Path("/sys/fs/cgroup/docker") / container_id, True),
    ):
        if directory.is_dir():
            return directory, v2
    return None


def working_set_mib(cgroup: tuple[Path, bool]) -> float | None:
    """The cgroup's memory less its inactive page cache, as `docker stats` counts it: what the
    processes hold, not file pages the kernel may drop (Postgres reads fill those up to the
    limit, so the raw usage peak says little)."""
    directory, v2 = cgroup
    try:
        usage = int((directory / ("memory.current" if v2 else "memory.usage_in_bytes")).read_text())
        stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines())
    except (OSError, ValueError):
        return None
    inactive = int(stat.get("inactive_file" if v2 else "total_inactive_file", 0))
    return (usage - inactive) / 2**20


class PeakSampler:
    """Each container's highest working set, sampled every `period` s while the block runs."""

    def __init__(self, ids: dict[str, str], period: float = 0.5) -> None:
        self.cgroups = {name: found for name, cid in ids.items() if (found := _cgroup_dir(cid))}
        self.peaks: dict[str, float] = {}
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, cgroup in self.cgroups.items():
                value = working_set_mib(cgroup)
                if value is not None and value > self.peaks.get(name, 0.0):
                    self.peaks[name] = value
            self._stop.wait(self.period)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def container_ids(config: LabConfig, overrides: Sequence[Path]) -> dict[str, str]:
    """Each service's full container id."""
    ids = {}
    for row in containers(config, overrides):
        inspected = _run(["docker", "inspect", "--format", "{{.Id}}", str(row.get("ID"))])
        if inspected.returncode == 0:
            ids[str(row.get("Service"))] = inspected.stdout.strip()
    return ids


def memory(ids: dict[str, str], peaks: dict[str, float]) -> dict[str, Memory]:
    """Each container's memory now (as `docker stats` shows it), its sampled peak, its limit."""
    found: dict[str, Memory] = {}
    for service, full_id in ids.items():
        stats = _run(["docker", "stats", "--no-stream", "--format", "{{json .}}", full_id],
                     timeout=60)  # fmt: skip
        now = float("nan")
        limit: float | None = None
        if stats.returncode == 0 and stats.stdout.strip():
            usage = json.loads(stats.stdout.strip().splitlines()[0]).get("MemUsage", "")
            used, _, limited = str(usage).partition("/")
            now, limit = _to_mib(used), _to_mib(limited)
        found[service] = Memory(now, peaks.get(service), limit)
    return found


def _to_mib(text: str) -> float:
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "kB": 1 / 1048.576,
             "MB": 1 / 1.048576, "GB": 1000 / 1.048576}  # fmt: skip
    text = text.strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                return float("nan")
    return float("nan")


@contextmanager
def compose_lab(
    config: LabConfig, overrides: Sequence[Path], env: dict[str, str], keep: bool
) -> Iterator[None]:
    try:
        yield
    finally:
        if keep:
            print("     --keep: the lab stays up (docker compose down --volumes ends it)")
        else:
            done = _run([*compose_base(config, overrides), "down", "--volumes",
                         "--remove-orphans", "--timeout", "15"], env=env, timeout=300)  # fmt: skip
            if done.returncode != 0:
                print(f"FAIL teardown: {_tail(done, 5)}", flush=True)


def _print_table(healthy: dict[str, float], used: dict[str, Memory]) -> None:
    print()
    print(f"{'container':<12} {'healthy after':>14} {'memory MiB':>11} {'peak MiB':>9} "
          f"{'limit MiB':>10}")  # fmt: skip
    for service in sorted(set(healthy) | set(used)):
        mem = used.get(service)
        after = f"{healthy[service]:.1f} s" if service in healthy else "-"
        now = f"{mem.now_mib:.0f}" if mem else "-"
        peak = f"{mem.peak_mib:.0f}" if mem and mem.peak_mib is not None else "-"
        limit = f"{mem.limit_mib:.0f}" if mem and mem.limit_mib is not None else "-"
        print(f"{service:<12} {after:>14} {now:>11} {peak:>9} {limit:>10}")


def run(
    root: Path, verify_seconds: int, keep: bool, images_only: bool = False, drill_load: int = 0
) -> int:
    report = Report()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drill-smoke-") as scratch:
        state = Path(scratch) / "state"
        state.mkdir()
        # As a user with a strict umask would have it: the containers must still read it.
        state.chmod(0o700)
        env = {**os.environ, "DRILL_STATE_DIR": str(state), "COLUMNS": "200"}
        found = LabConfig.from_env(root)
        config = LabConfig(found.root, state, found.port_offset)
        if config.port_offset:
            raise SmokeError("the compose lab publishes fixed ports: unset DRILL_PORT_OFFSET")
        ensure_engine(report)
        if images_only:
            ensure_images(config, report)
            print(f"compose smoke: images ready in {time.monotonic() - began:.0f} s")
            return 0
        if compose.project_running(config):
            raise SmokeError("a compose lab is running here: `docker compose down` it first")
        absent = ensure_images(config, report)
        overrides: list[Path] = []
        if absent:
            override = Path(scratch) / "without.yaml"
            override.write_text(yaml.safe_dump(without(absent)))
            overrides.append(override)
        expected = services(config, overrides)
        with compose_lab(config, overrides, env, keep):
            healthy = up(config, overrides, env)
            report.note(
                f"up: {len(healthy)} containers healthy, the last after "
                f"{max(healthy.values(), default=float('nan')):.1f} s"
            )
            check_health(config, overrides, expected, report)
            ids = container_ids(config, overrides)
            with PeakSampler(ids) as sampler:
                check_ports(config, overrides, report)
                check_scrapes(report)
                check_flag_flip(config, env, report)
                check_verify(config, env, verify_seconds, report)
                if drill_load:
                    measure_drill_load(config, env, drill_load)
            used = memory(ids, sampler.peaks)
        _print_table(healthy, used)
    print()
    print(f"compose smoke: {'passed' if report.passed else 'FAILED'} "
          f"in {time.monotonic() - began:.0f} s")  # fmt: skip
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/compose-smoke", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--verify-seconds", type=int, default=20,
                        help="load per drill's baseline verify (default 20)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    parser.add_argument("--images-only", action="store_true",
                        help="only the engine and the images (CI prepares them early)")  # fmt: skip
    parser.add_argument("--drill-load", type=int, default=0, metavar="SECONDS",
                        help="then run each drill as shipped, triggers on, for SECONDS: the "
                        "memory peaks under the drills' own load (not a check)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        return run(find_root(Path.cwd()), args.verify_seconds, args.keep, args.images_only,
                   args.drill_load)  # fmt: skip
    except SmokeError as exc:
        print(f"FAIL compose smoke: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
