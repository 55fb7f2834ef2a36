"""The full-length fp-drift drill runs that CI shortens, in three directions.

Each direction gets its own copy of the lab (drill.solutions.copy_lab), its own Postgres
database and port offset, and runs `python -m drill.cli verify fp-drift --json PATH --root COPY`
with the scenario's full load duration (60 s, 20 Locust users):

  shipped + triggers   must fail its SLAs (exit 1)
  patched + triggers   must pass (exit 0)
  shipped --baseline   every trigger off: "fine in staging" (exit 0)

POST /transactions p50/p95/p99 come from the run's raw samples (samples.tsv in the run_dir
the JSON result names; nearest rank, as drill verify computes them). The JSON's own p50/p95/p99
figures mix in the balance reads, so only its POST p95 check is comparable; it is cross-checked.

Run: .venv/bin/python benchmarks/fp_drift_verify.py [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from _lab import backend_note, header, median, percentile, print_table, running_lab

from drill.machine import PIN_ENV, pinned_cpus

SCENARIO = "fp-drift"
POST_REQUEST = ("POST", "/transactions")
# Load (60 s) + Locust's stop timeout (15 s) + settle, drain and collection, with room to spare.
VERIFY_TIMEOUT_S = 300


@dataclass(frozen=True)
class Direction:
    name: str
    solution: str | None
    baseline: bool
    expect: int


DIRECTIONS = (
    Direction("shipped+triggers", None, False, 1),
    Direction("patched+triggers", SCENARIO, False, 0),
    Direction("shipped --baseline", None, True, 0),
)


@dataclass
class Outcome:
    direction: str
    exit_code: int
    figures: dict[str, float]
    post_p50: float
    post_p95: float
    post_p99: float
    check_p95: float
    seconds: float
    failed: list[str]


def post_latencies(run_dir: Path) -> list[float]:
    samples = run_dir / "samples.tsv"
    if not samples.exists():
        return []
    values = []
    for line in samples.read_text().splitlines():
        method, name, ms, _ok, *_started = line.split("\t")
        if (method, name) == POST_REQUEST:
            values.append(float(ms))
    return values


def run_in_own_group(command: list[str], cwd: Path, env: dict[str, str], output: IO[str]) -> int:
    """Run drill verify in its own process group, so a timeout also stops its Locust child."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return process.wait(timeout=VERIFY_TIMEOUT_S)
    except BaseException:
        for signum in (signal.SIGINT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            try:
                process.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def run_direction(direction: Direction, backend: str) -> Outcome:
    with running_lab(direction.solution, backend=backend, only=["ledger"]) as lab:
        json_path = lab.copy / "verify-result.json"
        command = [
            sys.executable, "-m", "drill.cli", "verify", SCENARIO,
            "--json", str(json_path), "--root", str(lab.copy),
            *(["--baseline"] if direction.baseline else []),
        ]  # fmt: skip
        print(f"[{direction.name}] {lab.ledger_url}: {' '.join(command[1:])}")
        started = time.monotonic()
        with tempfile.TemporaryFile("w+") as output:
            exit_code = run_in_own_group(command, lab.copy, lab.env(), output)
            output.seek(0)
            text_out = output.read()
        seconds = time.monotonic() - started
        result: dict[str, Any] = {}
        if json_path.exists():
            result = json.loads(json_path.read_text())
        else:
            tail = "\n".join(text_out.splitlines()[-15:])
            print(f"[{direction.name}] exit {exit_code}, no JSON result:\n{tail}")
        figures = {k: float(v) for k, v in result.get("figures", {}).items()}
        checks = result.get("checks", [])
        check_p95 = next(
            (
                float(c["value"])
                for c in checks
                if c["figure"] == "p95_ms" and c.get("request") == " ".join(POST_REQUEST)
            ),
            math.nan,
        )
        failed = [c["name"] for c in checks if not c["passed"]]
        posts = post_latencies(Path(result["run_dir"])) if "run_dir" in result else []
    return Outcome(
        direction=direction.name,
        exit_code=exit_code,
        figures=figures,
        post_p50=percentile(posts, 0.50),
        post_p95=percentile(posts, 0.95),
        post_p99=percentile(posts, 0.99),
        check_p95=check_p95,
        seconds=seconds,
        failed=failed,
    )


def count(value: float) -> int | float:
    """Counts print as whole numbers (NaN, for a missing figure, stays a float)."""
    return value if math.isnan(value) else round(value)


def row(outcome: Outcome) -> list[object]:
    f = outcome.figures
    return [
        outcome.direction,
        str(outcome.exit_code),
        count(f.get("ledger.payments", math.nan)),
        f.get("ledger.balance_drift", math.nan),
        count(f.get("ledger.duplicate_postings", math.nan)),
        count(f.get("ledger.misbooked_postings", math.nan)),
        count(f.get("ledger.retried_payments", math.nan)),
        count(f.get("ledger.unconfirmed_payments", math.nan)),
        outcome.post_p50,
        outcome.post_p95,
        outcome.post_p99,
        outcome.seconds,
    ]


HEADERS = [
    "direction",
    "exit",
    "payments",
    "balance_drift",
    "duplicate_postings",
    "misbooked",
    "retried",
    "unconfirmed",
    "POST p50 ms",
    "POST p95 ms",
    "POST p99 ms",
    "wall s",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per direction (default 1)")
    parser.add_argument(
        "--direction",
        action="append",
        choices=[d.name for d in DIRECTIONS],
        help="run only this direction (repeatable; default all)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    directions = [d for d in DIRECTIONS if not args.direction or d.name in args.direction]
    backend = backend_note()
    header(
        f"drill verify {SCENARIO}, full scenario duration, {len(directions)} direction(s)",
        [
            f"path: native lab, {backend}; one lab copy, database and port offset per run; "
            "Locust as drill verify starts it; loopback",
            f"{args.repeat} run(s) per direction; POST percentiles from the raw samples",
            f"slow-machine mode ({PIN_ENV}): {pinned_cpus() or 'off'}",
            "load average (1, 5, 15 min) at start: "
            + " ".join(f"{n:.2f}" for n in os.getloadavg()),
        ],
    )
    outcomes: dict[str, list[Outcome]] = {d.name: [] for d in directions}
    for attempt in range(args.repeat):
        if args.repeat > 1:
            print(f"-- run {attempt + 1}/{args.repeat}")
        for direction in directions:
            outcome = run_direction(direction, backend)
            outcomes[direction.name].append(outcome)
            print(
                f"[{direction.name}] exit {outcome.exit_code} in {outcome.seconds:.0f} s; "
                f"failed checks: {', '.join(outcome.failed) or 'none'}"
            )
    print()
    print("per run:")
    print_table(HEADERS, [row(o) for runs in outcomes.values() for o in runs])
    if args.repeat > 1:
        print()
        print(f"medians over {args.repeat} runs (exit: every run's code):")
        rows = []
        for name, runs in outcomes.items():
            keys = (
                "ledger.payments",
                "ledger.balance_drift",
                "ledger.duplicate_postings",
                "ledger.misbooked_postings",
                "ledger.retried_payments",
                "ledger.unconfirmed_payments",
            )
            rows.append(
                [
                    name,
                    ",".join(str(o.exit_code) for o in runs),
                    count(median([o.figures.get(keys[0], math.nan) for o in runs])),
                    median([o.figures.get(keys[1], math.nan) for o in runs]),
                    *(count(median([o.figures.get(k, math.nan) for o in runs])) for k in keys[2:]),
                    median([o.post_p50 for o in runs]),
                    median([o.post_p95 for o in runs]),
                    median([o.post_p99 for o in runs]),
                    median([o.seconds for o in runs]),
                ]
            )
        print_table(HEADERS, rows)
    print()
    verdicts = []
    for direction in directions:
        runs = outcomes[direction.name]
        as_expected = all(o.exit_code == direction.expect for o in runs)
        cross = all(math.isnan(o.check_p95) or math.isclose(o.check_p95, o.post_p95) for o in runs)
        verdicts.append(
            [
                direction.name,
                str(direction.expect),
                ",".join(str(o.exit_code) for o in runs),
                "yes" if as_expected else "NO",
                "yes" if cross else "NO",
                "; ".join(sorted({name for o in runs for name in o.failed})) or "-",
            ]
        )
    print_table(
        ["direction", "expected exit", "exit", "as expected", "p95 = SLA check", "failed checks"],
        verdicts,
    )
    ok = all(v[3] == "yes" for v in verdicts)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
