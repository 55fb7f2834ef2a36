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
     [--scenarios fp-drift,...] [--duration [SCENARIO=]SECONDS ...] [--cpu N] [--json FILE]

Ten runs of every direction in both modes take hours, so the work can be split and the parts
merged: `--cpu 1` pins a second pinned-mode lane to the other CPU (each lab still gets one CPU;
the two lanes share Postgres, so each lane is a little slower than a lone pinned run), `--json`
keeps every run, and `--report a.json b.json ...` prints the tables over all of them.
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
def mode_environment(mode: str, cpu: int) -> Iterator[None]:
    """DRILL_PIN_CPUS=<cpu> for the pinned mode (native.up and verify read it), else unset."""
    saved = os.environ.get(PIN_ENV)
    if mode == "pinned":
        os.environ[PIN_ENV] = str(cpu)
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


def parse_durations(given: list[str], scenarios: list[str]) -> dict[str, float | None]:
    """'30' sets every scenario, 'n-plus-one=40' one of them (over any plain value)."""
    plain: float | None = None
    named: dict[str, float] = {}
    for item in given:
        name, _, seconds = item.rpartition("=")
        if name and name not in scenarios:
            raise ValueError(f"--duration {item}: {name!r} is not one of {', '.join(scenarios)}")
        try:
            value = float(seconds)
        except ValueError:
            raise ValueError(f"--duration {item}: {seconds!r} is not a number of seconds") from None
        if value <= 0:
            raise ValueError(f"--duration {item}: seconds must be positive")
        if name:
            named[name] = value
        else:
            plain = value
    return {scenario: named.get(scenario, plain) for scenario in scenarios}


def git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def run_all(
    scenarios: list[str],
    modes: list[str],
    runs: int,
    durations: dict[str, float | None],
    cpu: int,
    keep: Path | None = None,
) -> list[dict[str, Any]]:
    """Every direction of every scenario, `runs` times per mode; one record per run."""
    records = []
    started = time.monotonic()
    commit = git_commit()
    plan = {scenario: directions(scenario) for scenario in scenarios}
    for mode in modes:
        with mode_environment(mode, cpu):
            for run in range(runs):
                for scenario, found in plan.items():
                    for direction in found:
                        duration = durations.get(scenario)
                        code, result = run_once(scenario, direction, duration)
                        records.append(
                            {"scenario": scenario, "direction": direction.name, "mode": mode,
                             "cpu": cpu if mode == "pinned" else None, "run": run,
                             "expect": direction.expect, "exit": code, "commit": commit,
                             "duration": duration, "result": result}
                        )  # fmt: skip
                        if keep is not None:  # a run cut short still leaves what it did
                            keep.write_text(json.dumps(records, indent=1, allow_nan=True))
                        mark = "ok" if code == direction.expect else "UNEXPECTED"
                        print(
                            f"[{time.monotonic() - started:6.0f}s] {mode} run {run + 1}: "
                            f"{scenario} {direction.name}: exit {code} ({mark})"
                            f"{missed(result)}",
                            flush=True,
                        )
    return records


def missed(result: dict[str, Any]) -> str:
    """'; missed: name (figure value vs bound), ...' for the checks a run failed, or ''."""
    if "error" in result:
        return f"; error: {result['error']}"
    failed = [
        f"{c['name']} ({c['figure']} {c['value']:g} vs "
        f"{'max ' + format(c['max'], 'g') if c.get('max') is not None else ''}"
        f"{' min ' + format(c['min'], 'g') if c.get('min') is not None else ''})"
        for c in result.get("checks", [])
        if not c["passed"]
    ]
    return f"; missed: {', '.join(failed)}" if failed else ""


def report(records: list[dict[str, Any]]) -> bool:
    """Print the verdict counts and the spread of every judged figure; True when all held."""
    verdicts: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    figures: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    failed_checks: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    expected: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record["scenario"], record["direction"], record["mode"])
        expected[key[:2]] = record["expect"]
        verdicts[key].append(record["exit"])
        for check in record["result"].get("checks", []):
            figures[key][check["figure"]].append(float(check["value"]))
            if not check["passed"]:
                failed_checks[key][check["name"]] += 1
        if "error" in record["result"]:
            failed_checks[key][f"error: {record['result']['error']}"] += 1

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
    return stable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default="normal,pinned")
    parser.add_argument("--scenarios", default=",".join(DRILLS))
    parser.add_argument(
        "--duration", action="append", default=[], metavar="[SCENARIO=]SECONDS",
        help="seconds of load, for every scenario or one (default: the scenario's own)",
    )  # fmt: skip
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the pinned mode uses")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument(
        "--report", type=Path, nargs="+", default=None, metavar="JSON",
        help="print the tables over runs kept with --json, and run nothing",
    )  # fmt: skip
    args = parser.parse_args()
    if args.report:
        records = []
        for path in args.report:
            try:
                records.extend(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                parser.error(f"{path}: {exc}")
        commits = sorted({str(r.get("commit")) for r in records})
        header(
            "Verdict stability: merged runs",
            [f"files: {', '.join(map(str, args.report))}", f"commits: {', '.join(commits)}"],
        )
        sys.exit(0 if report(records) else 1)

    scenarios = [s for s in args.scenarios.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [s for s in scenarios if s not in DRILLS] + [
        m for m in modes if m not in ("normal", "pinned")
    ]
    if unknown:
        parser.error(f"unknown scenario or mode: {', '.join(unknown)}")
    try:
        durations = parse_durations(args.duration, scenarios)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.cpu < (os.cpu_count() or 1):
        parser.error(f"--cpu {args.cpu}: this machine has CPUs 0..{(os.cpu_count() or 1) - 1}")

    backend = backend_note()
    header(
        "Verdict stability: every direction of every drill, N times, normal and pinned",
        [
            f"runs per direction and mode: {args.runs}; backend: {backend}; "
            "load: "
            + ", ".join(
                f"{s} {durations[s]:g} s" if durations.get(s) else f"{s} its own" for s in scenarios
            ),
            f"host: {os.cpu_count()} CPUs; pinned = lab and Locust on CPU {args.cpu} "
            f"({PIN_ENV}={args.cpu}); commit {git_commit()}",
            f"run id: {uuid.uuid4().hex[:8]}",
        ],
    )
    records = run_all(scenarios, modes, args.runs, durations, args.cpu, keep=args.json)
    print()
    sys.exit(0 if report(records) else 1)


if __name__ == "__main__":
    main()
