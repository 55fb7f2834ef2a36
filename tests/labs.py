"""Native labs for the drill tests: a copied tree, its own ports and database, the real CLI.

The lab environment and the databases come from drill.lab.harness, which the benchmarks use too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drill.lab.harness import drop_database, fresh_database, lab_env

__all__ = [
    "DRILL",
    "check_results",
    "clean_baseline",
    "drop_database",
    "explain",
    "fresh_database",
    "lab_env",
    "run_drill",
    "verify",
]

DRILL = [sys.executable, "-m", "drill.cli"]


def run_drill(
    root: Path, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The `drill` CLI as a subprocess, on the lab tree at root."""
    return subprocess.run(
        [*DRILL, *args, "--root", str(root)],
        env=env, cwd=root, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def verify(root: Path, env: dict[str, str], scenario: str, *args: str) -> tuple[int, Any]:
    """`drill verify scenario`: its exit code (0 or 1, never 2) and its result JSON."""
    result_path = root / "result.json"
    done = run_drill(root, env, "verify", scenario, "--json", str(result_path), *args)
    assert done.returncode in (0, 1), done.stderr + done.stdout
    assert f"drill verify {scenario}" in done.stdout
    return done.returncode, json.loads(result_path.read_text())


def clean_baseline(
    start_lab: Callable[[], tuple[Path, dict[str, str]]],
    verify_scenario: Callable[[Path, dict[str, str], str], tuple[int, Any]],
) -> Any:
    """The shipped code with every trigger off, verified with --baseline: it must pass. Its
    result JSON."""
    root, env = start_lab()
    code, result = verify_scenario(root, env, "--baseline")
    assert code == 0, explain(result)
    assert result["baseline"] is True
    return result


def explain(result: Any) -> str:
    """A verify result as an assertion message: every check with its figure and limit, the
    other figures, and how busy the machine was, so a CI log alone says what went wrong."""
    lines = [f"drill verify {result['scenario']}: {'passed' if result['passed'] else 'FAILED'}"]
    for check in result["checks"]:
        limit = f"<= {check['max']}" if check["max"] is not None else f">= {check['min']}"
        verdict = "ok" if check["passed"] else "MISSED"
        lines.append(f"  {verdict}: {check['name']}: {check['figure']} = {check['value']} {limit}")
    figures = ", ".join(f"{k}={v}" for k, v in sorted(result["figures"].items()))
    lines.append(f"  figures: {figures}")
    load = " ".join(f"{n:.2f}" for n in os.getloadavg())
    lines.append(f"  load average (1, 5, 15 min): {load}")
    return "\n".join(lines)


def check_results(result: Any) -> dict[str, bool]:
    """Whether each SLA check of a verify result passed, by figure."""
    return {check["figure"]: check["passed"] for check in result["checks"]}
