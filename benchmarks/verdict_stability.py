"""Does every direction of every drill give the same verdict, run after run, on any machine?

For each drill it runs every direction N times, each on a fresh native lab (its own copy of the
tree, Postgres database and ports), through the real CLI (`drill verify --json`):

  shipped          the code as shipped, triggers on        must fail (exit 1)
  patched          solutions/<scenario>.patch, triggers on  must pass (exit 0)
  baseline         the code as shipped, every trigger off   must pass (exit 0)
  shortcut:<what>  tests/shortcuts/<scenario>-<what>.patch  must fail (exit 1)

A shortcut patch applies to the shipped tree, or, when it does not, on top of the reference
fix (a "fix" that also switches something off).

Modes: `normal`, and `pinned`, the slow-machine mode: the lab's services and Locust on one
CPU (DRILL_PIN_CPUS=0), about what a two-vCPU hosted CI runner at half a laptop core's speed
can do. It prints the verdict counts per direction and mode, and the spread (min, median, max)
of every figure the checks judged.

Run: .venv/bin/python benchmarks/verdict_stability.py --runs 10 [--modes normal,pinned]
     [--scenarios fp-drift,...] [--duration SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _lab import REPO_ROOT, backend_note, header, median, print_table, running_lab

from drill.machine import PIN_ENV
from drill.solutions import SolutionError, apply_patch, copy_lab

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SHORTCUTS = REPO_ROOT / "tests" / "shortcuts"


@dataclass(frozen=True)
class Drill:
    only: tuple[str, ...]
    # The reference fix keeps its profile cache in Redis, as the compose lab does.
    redis_for_fix: bool = False


DRILLS = {
    "fp-drift": Drill(only=("ledger",)),
    "circular-deadlock": Drill(only=("chain",)),
    "n-plus-one": Drill(only=("feed", "profiles"), redis_for_fix=True),
}


@dataclass(frozen=True)
class Direction:
    name: str
    solution: str | None
    patches: tuple[Path, ...]
    baseline: bool
    expect: int


def shortcut_base(scenario: str, patch: Path) -> str | None:
    """None when the shortcut applies to the shipped tree, else the solution it builds on."""
    with tempfile.TemporaryDirectory() as tmp:
        shipped = copy_lab(REPO_ROOT, Path(tmp) / "shipped")
        try:
            apply_patch(shipped, patch, check=True)
            return None
        except SolutionError:
            fixed = copy_lab(REPO_ROOT, Path(tmp) / "fixed", solution=scenario)
            apply_patch(fixed, patch, check=True)  # neither: let the error say why
            return scenario


def directions(scenario: str) -> list[Direction]:
    found = [
        Direction("shipped", None, (), False, 1),
        Direction("patched", scenario, (), False, 0),
        Direction("baseline", None, (), True, 0),
    ]
    for patch in sorted(SHORTCUTS.glob(f"{scenario}-*.patch")):
        what = patch.stem.removeprefix(f"{scenario}-")
        found.append(
            Direction(f"shortcut:{what}", shortcut_base(scenario, patch), (patch,), False, 1)
        )
    return found


@contextlib.contextmanager
def mode_environment(mode: str) -> Iterator[None]:
    """DRILL_PIN_CPUS=0 for the pinned mode (native.up and verify read it), unset otherwise."""
    saved = os.environ.get(PIN_ENV)
    if mode == "pinned":
        os.environ[PIN_ENV] = "0"
    else:
        os.environ.pop(PIN_ENV, None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PIN_ENV, None)
        else:
            os.environ[PIN_ENV] = saved


def run_once(
    scenario: str, direction: Direction, duration: float | None
) -> tuple[int, dict[str, Any]]:
    drill = DRILLS[scenario]
    redis = REDIS_URL if drill.redis_for_fix and direction.solution else None
    with running_lab(
        direction.solution,
        only=list(drill.only),
        patches=direction.patches,
        redis_url=redis,
    ) as lab:
        result_path = lab.copy / "result.json"
        command = [
            sys.executable, "-m", "drill.cli", "verify", scenario,
            "--json", str(result_path), "--root", str(lab.copy),
            *(["--baseline"] if direction.baseline else []),
            *(["--duration", f"{duration:g}"] if duration else []),
        ]  # fmt: skip
        done = subprocess.run(
            command, env=lab.env(), cwd=lab.copy, capture_output=True, text=True, timeout=600
        )
        if done.returncode not in (0, 1) or not result_path.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return done.returncode, {"error": " | ".join(tail)}
        return done.returncode, json.loads(result_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default="normal,pinned")
    parser.add_argument("--scenarios", default=",".join(DRILLS))
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of load (default: the scenario's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [s for s in scenarios if s not in DRILLS] + [
        m for m in modes if m not in ("normal", "pinned")
    ]
    if unknown:
        parser.error(f"unknown scenario or mode: {', '.join(unknown)}")

    backend = backend_note()
    header(
        "Verdict stability: every direction of every drill, N times, normal and pinned",
        [
            f"runs per direction and mode: {args.runs}; backend: {backend}; "
            f"load: {'the scenario duration' if not args.duration else f'{args.duration:g} s'}",
            f"host: {os.cpu_count()} CPUs; pinned = lab and Locust on CPU 0 ({PIN_ENV}=0)",
            f"run id: {uuid.uuid4().hex[:8]}",
        ],
    )
    verdicts: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    figures: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    failed_checks: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    expected: dict[tuple[str, str], int] = {}
    records = []
    started = time.monotonic()
    plan = {scenario: directions(scenario) for scenario in scenarios}
    for mode in modes:
        with mode_environment(mode):
            for run in range(args.runs):
                for scenario, found in plan.items():
                    for direction in found:
                        key = (scenario, direction.name, mode)
                        expected[(scenario, direction.name)] = direction.expect
                        code, result = run_once(scenario, direction, args.duration)
                        verdicts[key].append(code)
                        for check in result.get("checks", []):
                            figures[key][check["figure"]].append(float(check["value"]))
                            if not check["passed"]:
                                failed_checks[key][check["name"]] += 1
                        records.append(
                            {"scenario": scenario, "direction": direction.name, "mode": mode,
                             "run": run, "exit": code, "result": result}
                        )  # fmt: skip
                        mark = "ok" if code == direction.expect else "UNEXPECTED"
                        print(
                            f"[{time.monotonic() - started:6.0f}s] {mode} run {run + 1}: "
                            f"{scenario} {direction.name}: exit {code} ({mark})",
                            flush=True,
                        )
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, allow_nan=True))

    print()
    rows = []
    for (scenario, name, mode), codes in sorted(verdicts.items()):
        want = expected[(scenario, name)]
        same = sum(code == want for code in codes)
        misses = ", ".join(
            f"{check} x{n}" for check, n in sorted(failed_checks[(scenario, name, mode)].items())
        )
        rows.append((scenario, name, mode, f"exit {want}", f"{same}/{len(codes)}", misses or "-"))
    print_table(("scenario", "direction", "mode", "expected", "as expected", "failed checks"), rows)

    print()
    spread = []
    for (scenario, name, mode), values in sorted(figures.items()):
        for figure, numbers in sorted(values.items()):
            spread.append(
                (scenario, name, mode, figure, min(numbers), median(numbers), max(numbers))
            )
    print_table(("scenario", "direction", "mode", "figure", "min", "median", "max"), spread)
    stable = all(
        all(code == expected[(s, n)] for code in codes) for (s, n, _), codes in verdicts.items()
    )
    print(f"\nevery direction gave its expected verdict in every run: {'yes' if stable else 'NO'}")
    sys.exit(0 if stable else 1)


if __name__ == "__main__":
    main()
