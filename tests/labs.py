"""Native labs for the drill tests: a copied tree, its own ports and database, the real CLI.

The lab environment and the databases come from drill.lab.harness, which the benchmarks use too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drill.lab.harness import drop_database, fresh_database, lab_env
from drill.solutions import copy_lab
from tests.conftest import REPO_ROOT

__all__ = [
    "DRILL",
    "check_results",
    "drop_database",
    "explain",
    "fresh_database",
    "lab_env",
    "native_labs",
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


class NativeLabs:
    """Labs a test starts, each from its own copy of the tree (as shipped, with a solution,
    with shortcut patches), on its own ports and, when named, its own database."""

    def __init__(self, tmp: Path, only: Sequence[str]) -> None:
        self.tmp, self.only = tmp, only
        self.started: list[tuple[Path, dict[str, str]]] = []
        self.databases: list[str] = []

    def start(
        self,
        solution: str | None = None,
        patches: Sequence[Path] = (),
        database: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[Path, dict[str, str]]:
        """`drill up --native --only ...` on a new copy; its root and environment."""
        root = copy_lab(
            REPO_ROOT, self.tmp / f"tree-{len(self.started)}", solution=solution, patches=patches
        )
        if database:
            self.databases.append(database)
        lab = lab_env(root, database_url=fresh_database(database) if database else None)
        lab.update(env or {})
        self.started.append((root, lab))
        only = [arg for service in self.only for arg in ("--only", service)]
        up = run_drill(root, lab, "up", "--native", *only)
        assert up.returncode == 0, up.stderr + up.stdout
        return root, lab


@contextmanager
def native_labs(tmp: Path, *only: str) -> Iterator[NativeLabs]:
    """Labs of `only`'s services; at the end every one is stopped and its database dropped."""
    labs = NativeLabs(tmp, only)
    try:
        yield labs
    finally:
        for root, env in labs.started:
            run_drill(root, env, "down")
        for database in labs.databases:
            drop_database(database)


def verify(root: Path, env: dict[str, str], scenario: str, *args: str) -> tuple[int, Any]:
    """`drill verify scenario`: its exit code (0 or 1, never 2) and its result JSON."""
    result_path = root / "result.json"
    done = run_drill(root, env, "verify", scenario, "--json", str(result_path), *args)
    assert done.returncode in (0, 1), done.stderr + done.stdout
    assert f"drill verify {scenario}" in done.stdout
    return done.returncode, json.loads(result_path.read_text())


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
