"""Fixes degrade gracefully: each reference fix at twice its drill's concurrency, all at once.

Each drill's patched lab (fresh copy, database and ports) takes `drill verify` with twice the
scenario's users (spawned at its rate), with the triggers on. Every raw request sample is then
put in one of three classes:

  answered   succeeded within the scenario's latency bound
  refused    failed fast (within 100 ms): a 503 with Retry-After, say, that a client can act on
  waited     anything else: slow successes and slow failures, up to the client's timeout

A fix degrades gracefully when nothing waits for the client's timeout (hung = 0) and the
correctness invariants still hold; the verify checks printed beside it say whether they did.

Run: .venv/bin/python benchmarks/degradation.py [--scenarios ...] [--factor 2] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _lab import REPO_ROOT, backend_note, header, median, percentile, print_table, running_lab
from verdict_stability import DRILLS, REDIS_URL

from drill.scenarios import load_program
from drill.verify import read_samples

REFUSED_FAST_MS = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(DRILLS))
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=None)
    args = parser.parse_args()
    program = load_program(REPO_ROOT / "scenarios.yaml")
    backend = backend_note()
    header(
        f"Graceful degradation: reference fixes at {args.factor:g}x their drill's users",
        [f"backend: {backend}; refused fast = failed within {REFUSED_FAST_MS:g} ms"],
    )
    rows = []
    for scenario_name in args.scenarios.split(","):
        scenario = program.scenario(scenario_name)
        drill = DRILLS[scenario_name]
        users = round(scenario.load.users * args.factor)
        bound = next(
            (c.max for c in scenario.sla if c.kind == "latency" and c.max is not None), None
        )
        with running_lab(
            scenario_name,
            only=list(drill.only),
            redis_url=REDIS_URL if drill.redis_for_fix else None,
        ) as lab:
            result_path = lab.copy / "result.json"
            command = [
                sys.executable, "-m", "drill.cli", "verify", scenario_name,
                "--users", str(users), "--json", str(result_path), "--root", str(lab.copy),
                *(["--duration", f"{args.duration:g}"] if args.duration else []),
            ]  # fmt: skip
            done = subprocess.run(
                command, env=lab.env(), cwd=lab.copy, capture_output=True, text=True, timeout=900
            )
            if not result_path.exists():
                print(f"{scenario_name}: verify could not run:\n{done.stderr or done.stdout}")
                continue
            result = json.loads(result_path.read_text())
            samples = read_samples(Path(result["run_dir"]) / "samples.tsv")
        limit = bound if bound is not None else float("inf")
        answered = [s for s in samples if s.ok and s.ms <= limit]
        refused = [s for s in samples if not s.ok and s.ms <= REFUSED_FAST_MS]
        waited = len(samples) - len(answered) - len(refused)
        failed = [c["name"] for c in result["checks"] if not c["passed"]]
        rows.append(
            (
                scenario_name,
                users,
                len(samples),
                len(answered),
                len(refused),
                waited,
                result["figures"].get("hung_requests", float("nan")),
                median([s.ms for s in samples]),
                percentile([s.ms for s in samples], 0.99),
                max((s.ms for s in samples), default=float("nan")),
                ", ".join(failed) or "-",
            )
        )
    print_table(
        (
            "scenario", "users", "requests", "answered", "refused fast", "waited", "hung",
            "p50 ms", "p99 ms", "max ms", "checks missed",
        ),
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
