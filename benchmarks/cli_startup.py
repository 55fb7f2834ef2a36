"""CLI start-up: how long `drill flags list/set` take, against a bare `python -c pass`.

An instructor flips a flag in front of the room and expects it to act at once. Each command
runs as a fresh interpreter on this tree (PYTHONPATH), with its state in a temporary directory:
no lab needs to run, since `drill flags set` only writes the state file the services read.
The commands take turns, run after run, so a busy machine slows them all alike; the ratio to
`python -c pass` is the figure to compare across machines. The `typer + pydantic + rich` row is
the floor: what a typer command costs before drill's own code runs.

Target: `drill flags list/set` within 0.3 s on a laptop-class machine, and within 15x a bare
`python -c pass` measured at the same time.

Run: .venv/bin/python benchmarks/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _lab import REPO_ROOT, header, median, percentile, print_table

FLAG, VARIANT = "ledger.fx_conversion", "on"
TARGET_S, TARGET_RATIO = 0.3, 15.0
DRILL = ["-m", "drill.cli"]
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    # What a typer command that prints a table costs before drill runs a line. (typer is held
    # below 0.29, which coerces every parameter through pydantic: that alone was 0.2 s more.)
    "typer + rich": ["-c", "import typer.main, rich.console, rich.table"],
    "import drill.cli": ["-c", "import drill.cli"],
    "drill --help": [*DRILL, "--help"],
    "drill flags list": [*DRILL, "flags", "list"],
    f"drill flags set {FLAG} {VARIANT}": [*DRILL, "flags", "set", FLAG, VARIANT],
    f"drill flags reset {FLAG}": [*DRILL, "flags", "reset", FLAG],
}
# The rows the target applies to.
FLAG_COMMANDS = ("drill flags list", f"drill flags set {FLAG} {VARIANT}")


def timed(args: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of one fresh interpreter running args; it must succeed."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    load = " ".join(f"{n:.2f}" for n in os.getloadavg())
    header(
        "drill CLI start-up",
        [
            f"python {sys.version.split()[0]} ({sys.executable}); {os.cpu_count()} CPUs, "
            f"load average {load}",
            f"{args.runs} runs per command, taking turns; each a fresh interpreter on {REPO_ROOT}",
            f"target: drill flags list/set <= {TARGET_S:g} s and <= {TARGET_RATIO:g}x "
            "python -c pass",
        ],
    )
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="drill-cli-startup-") as state:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "DRILL_STATE_DIR": state,
            "COLUMNS": "200",
        }
        env.pop("DRILL_PORT_OFFSET", None)
        for command in COMMANDS.values():  # warm the page cache and .pyc files
            timed(command, env)
        for _ in range(args.runs):
            for name, command in COMMANDS.items():
                seconds[name].append(timed(command, env))
        assert (Path(state) / "flags.json").exists(), "flags set wrote no state file"
    bare = median(seconds["python -c pass"])
    rows = [[name, median(s), percentile(s, 0.9), median(s) / bare] for name, s in seconds.items()]
    print_table(["command", "median s", "p90 s", "x python -c pass"], rows)
    print()
    worst = max(median(seconds[name]) for name in FLAG_COMMANDS)
    ratio = worst / bare
    verdict = "met" if worst <= TARGET_S and ratio <= TARGET_RATIO else "MISSED"
    print(
        f"flags commands: slowest median {worst:.3f} s, {ratio:.1f}x python -c pass "
        f"(target <= {TARGET_S:g} s, <= {TARGET_RATIO:g}x): {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
