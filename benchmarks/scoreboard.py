"""How many scoreboard reads per second the runner's API serves, and its memory.

A workshop of 6 teams with a journal of 200 events (claims, verdicts, hints, verify runs and
the program's own lines), in a real SQLite store. The runner's app (drill.program.api plus the
teams' routes) runs in a process of its own under uvicorn, as in `drill program start`; each
round, N clients (the teams' laptops and the projector) read one page as fast as they can for
the round's seconds. RSS is the server process's resident memory (psutil), after each round.

Run: .venv/bin/python benchmarks/scoreboard.py [--seconds 10] [--clients 7] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from _lab import REPO_ROOT, free_port, header, median, percentile, print_table

from drill.program.journal import Journal
from drill.program.teams import Workshop
from drill.scenarios import load_program

TEAMS = [f"team-{n}" for n in range(1, 7)]
EVENTS = 200
PAGES = ("/scoreboard", "/scoreboard.html", "/metrics")


def populate(directory: Path) -> int:
    """6 teams and what a day gives them; the journal then filled to EVENTS lines."""
    program = load_program(REPO_ROOT / "scenarios.yaml")
    journal = Journal(directory / "journal.jsonl")
    workshop = Workshop(directory, program, journal)
    workshop.add_teams(TEAMS)
    scenarios = list(program.agenda_scenarios())
    workshop.note_live(scenarios, 900.0, datetime.now(UTC))
    chance = random.Random(11)
    for team in TEAMS:
        for scenario in scenarios:
            for _ in range(chance.randint(0, 2)):
                workshop.unlock_hint(team, scenario, [])
            claim = workshop.file_claim(
                team, scenario, f"{team} thinks it is this", [f"{chance.getrandbits(128):032x}"],
                None, scenarios, {}, program_at=900.0 + chance.randint(300, 4000),
            )  # fmt: skip
            workshop.judge(claim.id, chance.choice(["accept", "reject"]), "")
            for attempt in range(2):
                passed = attempt == 1 and chance.random() < 0.7
                workshop.submit_verify(team, _result(scenario, passed, chance))
    while len(journal.read().events) < EVENTS:
        journal.append("note", "runner", text="filler: a phase or flag line of the day")
    return len(journal.read().events)


def _result(scenario: str, passed: bool, chance: random.Random) -> dict[str, object]:
    checks = [
        {"name": "invariant", "figure": "x.invariant", "kind": "invariant",
         "value": 0.0 if passed else 12.0, "passed": passed},
        {"name": "latency", "figure": "p95_ms", "kind": "latency",
         "value": chance.uniform(80, 900), "passed": passed},
    ]  # fmt: skip
    return {"scenario": scenario, "passed": passed, "baseline": False, "checks": checks}


SERVE = """
import sys, time
from pathlib import Path
from drill.program.api import ApiServer, Board, create_app
from drill.program.journal import Journal
from drill.program.team_api import install
from drill.program.teams import Workshop
from drill.scenarios import load_program
directory, port = Path(sys.argv[1]), int(sys.argv[2])
program = load_program(Path(sys.argv[3]) / "scenarios.yaml")
board = Board()
board.publish({"running": True, "entry": "5: wrap-up", "type": "phase", "at": "2:55",
               "elapsed": 10500.0, "live": [], "hints": [], "reveal": True})
app = create_app(board, program.agenda_scenarios())
workshop = Workshop(directory, program, Journal(directory / "journal.jsonl"))
install(app, workshop, directory / "notes", directory / "logs")
server = ApiServer(app, port)
server.start()
while True:
    time.sleep(3600)
"""


def hammer(url: str, clients: int, seconds: float) -> list[float]:
    """Every client reads `url` in a loop for `seconds`; each read's latency in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        mine: list[float] = []
        with httpx.Client(timeout=10) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = http.get(url)
                response.raise_for_status()
                mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=7, help="6 teams and the projector")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        events = populate(directory)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(directory), str(port), str(REPO_ROOT)],
            cwd=REPO_ROOT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            process = psutil.Process(server.pid)
            header(
                "Scoreboard reads per second",
                [
                    f"{len(TEAMS)} teams, {events} journal events; {options.clients} clients "
                    f"for {options.seconds:g} s per round, {options.rounds} rounds per page",
                    f"server: the runner's app under uvicorn, pid {server.pid}",
                ],
            )
            rows = []
            for page in PAGES:
                rates, p50s, p99s, rss = [], [], [], []
                for _ in range(options.rounds):
                    latencies = hammer(base + page, options.clients, options.seconds)
                    rates.append(len(latencies) / options.seconds)
                    p50s.append(median(latencies))
                    p99s.append(percentile(latencies, 0.99))
                    rss.append(process.memory_info().rss / 2**20)
                rows.append(
                    [
                        page,
                        f"{median(rates):.0f}",
                        f"{min(rates):.0f}-{max(rates):.0f}",
                        f"{median(p50s):.1f}",
                        f"{median(p99s):.1f}",
                        f"{max(rss):.1f}",
                    ]
                )
            print_table(
                ["page", "reads/s (median)", "range", "p50 ms", "p99 ms", "RSS MiB (max)"], rows
            )
        finally:
            server.terminate()
            server.wait(5)


if __name__ == "__main__":
    main()
