"""The chain drill, measured: time-to-deadlock over repeated runs, and before/after the fix.

Part 1 (time-to-deadlock): the shipped chain with the circular-deadlock triggers on, restarted
before every run, under the scenario's Locust load. chain-a's completed orders are polled from
/metrics every 0.25 s; the deadlock time is the last moment an order completed, counted from
the first request of the load. A run counts as deadlocked when no order completes for 5 s
while orders are still in flight; the chain is then stopped and started again.

Part 2 (before/after): `drill verify circular-deadlock` at full length in four directions
(shipped + triggers, patched + triggers, shipped --baseline, and patched + triggers at twice the
concurrency with bursty arrivals: 32 shoppers who all order at the same instant each second),
with the CPU time the three services and Locust used, read from /proc. For the bursty run it
prints how fast the taken orders (201, 409) and the refused ones (503) were answered.

Run: .venv/bin/python benchmarks/chain_deadlock.py [--runs 10] [--skip-verify]
Slow-machine mode: DRILL_PIN_CPUS=0 (the lab and Locust on one CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from _lab import header, median, percentile, print_table, running_lab

from drill import machine, native
from drill.lab import processes
from faults import load_catalog, reset_flags, set_flags

SCENARIO = "circular-deadlock"
CHAIN = ["chain-a", "chain-b", "chain-c"]
TRIGGERS = {"chain.fraud_callback": ("on", None), "chain.b_latency_ms": ("slow", None)}
POLL_S = 0.25
STALL_S = 5.0
RUN_LIMIT_S = 40.0
ORDERS = re.compile(
    r'^http_server_requests_total\{[^}]*route="/orders"[^}]*status="2\d\d"[^}]*\} ([0-9.e+]+)',
    re.M,
)
IN_FLIGHT = re.compile(r'^http_server_requests_in_flight\{service="chain-a"\} ([0-9.e+]+)', re.M)


def scrape(client: httpx.Client) -> tuple[float, float]:
    text = client.get("/metrics").text
    done = sum(float(v) for v in ORDERS.findall(text))
    match = IN_FLIGHT.search(text)
    return done, float(match.group(1)) if match else 0.0


def locust_command(root: Path, host: str, seconds: float) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(root / "loadtests" / "chain.py"),
        "--headless", "--only-summary", "--host", host, "--users", "16", "--spawn-rate", "4",
        "--run-time", f"{int(seconds)}s", "--loglevel", "WARNING", "Shopper",
    ]  # fmt: skip


def time_to_deadlock(root: Path, config: native.LabConfig) -> float | None:
    """Seconds from the load's first completed order to its last, or None if it never stalls."""
    url = config.url(native.SERVICES["chain-a"])
    with httpx.Client(base_url=url, timeout=2, trust_env=False) as client:
        initial, _ = scrape(client)
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                locust_command(root, url, RUN_LIMIT_S), cwd=root, stdout=log, stderr=log
            )
            try:
                started = last_progress = None
                last_done = initial
                deadline = time.monotonic() + RUN_LIMIT_S
                while time.monotonic() < deadline:
                    time.sleep(POLL_S)
                    now = time.monotonic()
                    done, in_flight = scrape(client)
                    if done > last_done:
                        started = started or now
                        last_progress, last_done = now, done
                    if (
                        last_progress is not None
                        and now - last_progress >= STALL_S
                        and in_flight > 0
                    ):
                        assert started is not None
                        # The poll interval bounds the error; the first order marks load start.
                        return last_progress - started
                return None
            finally:
                processes.end(process, 20, signal.SIGINT)


@dataclass
class Verified:
    direction: str
    code: int
    figures: dict[str, float]
    cpu_s: dict[str, float]
    answers: list[dict[str, float]]


def _cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _locust_pids(root: Path) -> list[int]:
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        cmd = " ".join(process.info["cmdline"] or ())
        if "locust" in cmd and str(root) in cmd and "drill.cli" not in cmd:
            pids.append(process.pid)
    return pids


def verify(
    direction: str,
    solution: str | None,
    baseline: bool,
    seconds: float | None,
    users: int | None = None,
    arrivals: str | None = None,
) -> Verified:
    with running_lab(solution, backend="SQLite", only=CHAIN) as lab:
        env = lab.env()
        if arrivals:
            env["CHAIN_ARRIVALS"] = arrivals
        result_path = lab.copy / "result.json"
        command = [
            sys.executable, "-m", "drill.cli", "verify", SCENARIO, "--json", str(result_path),
            "--root", str(lab.copy), *(["--baseline"] if baseline else []),
            *(["--duration", str(seconds)] if seconds else []),
            *(["--users", str(users)] if users else []),
        ]  # fmt: skip
        services = {
            status.name: status.pid
            for status in native.status(lab.config)
            if status.name in CHAIN and status.pid
        }
        before = {name: _cpu_seconds(pid) or 0.0 for name, pid in services.items()}
        locust_cpu: dict[int, float] = {}
        process = subprocess.Popen(
            command, cwd=lab.copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        while process.poll() is None:
            for pid in _locust_pids(lab.copy):
                locust_cpu[pid] = _cpu_seconds(pid) or locust_cpu.get(pid, 0.0)
            time.sleep(0.5)
        cpu = {name: (_cpu_seconds(pid) or 0.0) - before[name] for name, pid in services.items()}
        cpu["locust"] = sum(locust_cpu.values())
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        answers = []
        if result:
            truth = Path(result["run_dir"]) / "truth.jsonl"
            answers = [
                json.loads(line) for line in truth.read_text().splitlines() if '"answered"' in line
            ]
        return Verified(direction, process.returncode, result.get("figures", {}), cpu, answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="time-to-deadlock repetitions")
    parser.add_argument("--skip-verify", action="store_true", help="only time-to-deadlock")
    parser.add_argument("--skip-deadlock", action="store_true", help="only before/after")
    parser.add_argument("--duration", type=float, help="verify seconds (default: scenario's)")
    args = parser.parse_args()
    header(
        "chain drill: circular-deadlock",
        [
            f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
            f"pinned to CPUs: {machine.pinned_cpus() or 'no'}",
            "load: 16 Locust users, spawn rate 4/s, triggers chain.fraud_callback=on, "
            "chain.b_latency_ms=slow",
        ],
    )
    if not args.skip_deadlock:
        times: list[float] = []
        never = 0
        with running_lab(None, backend="SQLite", only=CHAIN) as lab:
            catalog = load_catalog()
            for run in range(1, args.runs + 1):
                native.restart(lab.config, CHAIN)
                set_flags(lab.state_dir, catalog, TRIGGERS, reset_others=True)
                time.sleep(1.0)
                seconds = time_to_deadlock(lab.copy, lab.config)
                reset_flags(lab.state_dir, catalog)
                label = "no deadlock" if seconds is None else f"{seconds:.2f} s"
                print(f"run {run:2d}: time-to-deadlock {label}", flush=True)
                if seconds is None:
                    never += 1
                else:
                    times.append(seconds)
        print()
        if times:
            print(
                f"time-to-deadlock over {len(times)} deadlocked runs of {args.runs}: "
                f"median {median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s"
                + (f"; {never} runs did not deadlock within {RUN_LIMIT_S:g} s" if never else "")
            )
        else:
            print(f"no run deadlocked within {RUN_LIMIT_S:g} s")
        print()
    if not args.skip_verify:
        rows = []
        for direction, solution, baseline, users, arrivals in (
            ("shipped + triggers", None, False, None, None),
            ("patched + triggers", SCENARIO, False, None, None),
            ("shipped, baseline", None, True, None, None),
            ("patched, 32 bursty users", SCENARIO, False, 32, "bursty"),
        ):
            outcome = verify(direction, solution, baseline, args.duration, users, arrivals)
            figures = outcome.figures
            seconds = figures.get("requests", 0) / figures.get("throughput_rps", 1) or 1
            total_cpu = sum(outcome.cpu_s.values())
            rows.append(
                (
                    direction,
                    outcome.code,
                    figures.get("requests", float("nan")),
                    figures.get("success_ratio", float("nan")),
                    figures.get("throughput_rps", float("nan")),
                    figures.get("p99_ms", float("nan")),
                    figures.get("max_ms", float("nan")),
                    total_cpu / seconds,
                )
            )
            print(f"{direction}: CPU seconds {json.dumps(outcome.cpu_s)}", flush=True)
            if arrivals:
                taken = [a["ms"] for a in outcome.answers if a["http_status"] in (201, 409)]
                refused = [a["ms"] for a in outcome.answers if a["http_status"] == 503]
                print(
                    f"{direction}: {len(taken)} taken, p99 {percentile(taken, 0.99):.0f} ms; "
                    f"{len(refused)} refused with 503, p99 {percentile(refused, 0.99):.0f} ms; "
                    f"hung {figures.get('hung_requests')}, load average "
                    f"{os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        print()
        print_table(
            ["direction", "exit", "orders", "success", "orders/s", "p99 ms", "max ms", "cores"],
            rows,
        )


if __name__ == "__main__":
    main()
