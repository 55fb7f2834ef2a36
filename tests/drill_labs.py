"""The drill tests' labs: each from its own copy of the tree (as shipped, with a reference fix,
with shortcut patches), on its own ports and database, started with the real CLI.

The participants' kit leaves this module out with the drill tests: it applies the fixes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from drill.solutions import copy_lab
from tests.conftest import REPO_ROOT
from tests.labs import drop_database, fresh_database, lab_env, run_drill


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
