"""How long `drill report` takes, and how much memory, for a whole workshop day.

The day (tests/report_day.py): a 3-hour journal of thousands of events (the program's phases,
triggers, hints, reveal, decoys flipping all day, TEAMS teams' claims, hints and submitted runs),
twelve verify runs with their samples, the feed probes, and the teams' store; and 3 hours of
the lab's series at 5 s resolution (ACCOUNTS ledger accounts, the chain's and the feed's
request and latency series, process start times), backfilled into a TSDB with `promtool tsdb
create-blocks-from openmetrics` and served by a real Prometheus. Each round runs the real CLI
(`drill report --no-probe --since 3h`; no feed runs here to probe) as a subprocess; its wall
time and its max RSS (wait4) are measured.

Run: .venv/bin/python benchmarks/report.py [--rounds 3] [--accounts 200] [--events 3000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _lab import REPO_ROOT, free_port, header, median, print_table

from drill import prometheus
from drill.program.journal import Journal, journal_path

sys.path.insert(0, str(REPO_ROOT))
from tests.report_day import Day, openmetrics, write_day  # noqa: E402

TEAMS = tuple(f"team-{n}" for n in range(1, 31))
SINCE_S = 3 * 3600


def build_day(workdir: Path, accounts: int, events: int) -> tuple[Day, Path, int]:
    day = Day(
        end=datetime.now(UTC) - timedelta(seconds=30),
        accounts=accounts,
        teams=TEAMS,
        filler_events=max(0, events - 700),
    )
    state = workdir / ".drill"
    write_day(state, day)
    return day, state, len(Journal(journal_path(state)).read().events)


def backfill(day: Day, workdir: Path) -> tuple[Path, int, float]:
    """The day's series in a TSDB; (its directory, samples, seconds promtool took)."""
    source = workdir / "day.om"
    samples = 0
    with source.open("w") as handle:
        for line in openmetrics(day):
            samples += not line.startswith("#")
            handle.write(line)
    data = workdir / "tsdb"
    began = time.perf_counter()
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    source.unlink()
    return data, samples, time.perf_counter() - began


def start_prometheus(data: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    executable = prometheus.binary()
    assert executable is not None, f"prometheus is not on PATH; {prometheus.INSTALL_HINT}"
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 5s\nscrape_configs: []\n")
    port = free_port()
    command = prometheus.command(executable, config, data, f"127.0.0.1:{port}")
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2, trust_env=False).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit("Prometheus did not get ready on the backfilled TSDB within 120 s")


def one_report(state: Path, url: str, out: Path) -> tuple[float, float]:
    """(seconds, max RSS in MiB) of one `drill report` process."""
    env = {
        **os.environ,
        "DRILL_STATE_DIR": str(state),
        "DRILL_PROMETHEUS_URL": url,
        "DRILL_JAEGER_URL": f"http://127.0.0.1:{free_port()}",
    }
    command = [
        sys.executable,
        "-m",
        "drill.cli",
        "report",
        "--no-probe",
        "--since",
        "3h",
        "--out",
        str(out),
        "--root",
        str(REPO_ROOT),
    ]
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        raise SystemExit(f"drill report exited {code}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="drill-report-bench-"))
    process = None
    try:
        day, state, events = build_day(workdir, args.accounts, args.events)
        data, samples, promtool_s = backfill(day, workdir)
        process, url = start_prometheus(data, workdir)
        header(
            "drill report: a 3-hour workshop day",
            [
                f"journal: {events:,} events; verify runs: 12; teams: {len(TEAMS)}",
                f"Prometheus: {samples:,} samples at 5 s over 3 h ({args.accounts} ledger "
                f"accounts), backfilled by promtool in {promtool_s:.1f} s",
                "each round: `drill report --no-probe --since 3h` as a subprocess",
            ],
        )
        rows: list[list[object]] = []
        times: list[float] = []
        memory: list[float] = []
        for number in range(1, args.rounds + 1):
            out = workdir / f"report-{number}.html"
            seconds, rss = one_report(state, url, out)
            times.append(seconds)
            memory.append(rss)
            rows.append([number, seconds, rss, out.stat().st_size / 1024])
        print_table(["round", "seconds", "max RSS MiB", "report KiB"], rows)
        print()
        print(
            f"median of {args.rounds}: {median(times):.2f} s, RSS {median(memory):.0f} MiB; "
            f"max RSS {max(memory):.0f} MiB"
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
