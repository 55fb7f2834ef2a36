"""Reference fixes in solutions/: apply, revert, and copies of the lab tree to try them on."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# What a participant's checkout holds that the lab runs from.
LAB_TREE = (
    "drill",
    "faults",
    "services",
    "loadtests",
    "solutions",
    "prometheus",
    "grafana",
    "scenarios.yaml",
    # The lab's own review checks (drill guardrails), so a copy can be checked like the tree.
    "guardrails",
)


class SolutionError(Exception):
    """A patch is unknown or does not apply; the message says which and why."""


def patch_path(root: Path, name: str) -> Path:
    patch = root / "solutions" / f"{name}.patch"
    if not patch.exists():
        known = ", ".join(p.stem for p in sorted((root / "solutions").glob("*.patch")))
        raise SolutionError(f"no solution {name!r}; known: {known or 'none'}")
    return patch


def apply(root: Path, name: str, *, reverse: bool = False) -> None:
    """git apply (or --reverse) solutions/NAME.patch in the tree at root."""
    apply_patch(root, patch_path(root, name), reverse=reverse)


def apply_patch(root: Path, patch: Path, *, reverse: bool = False, check: bool = False) -> None:
    """git apply a patch file in the tree at root (--reverse, or only --check, when asked)."""
    flags = [*(["--reverse"] if reverse else []), *(["--check"] if check else [])]
    command = ["git", "apply", *flags, str(patch)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SolutionError(f"{' '.join(command[:-1])} {patch.name} failed:\n{done.stderr.strip()}")


def copy_lab(
    root: Path,
    destination: Path,
    *,
    solution: str | None = None,
    patches: Sequence[Path] = (),
) -> Path:
    """A copy of the lab's source at destination, with a solution and then patches applied."""
    destination.mkdir(parents=True)
    for name in LAB_TREE:
        source = root / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", ".drill")
            shutil.copytree(source, destination / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, destination / name)
    if solution is not None:
        apply(destination, solution)
    for patch in patches:
        apply_patch(destination, patch)
    return destination
