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
    patch = patch_path(root, name)
    command = ["git", "apply", *(["--reverse"] if reverse else []), str(patch)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise SolutionError(f"{' '.join(command[:-1])} {patch.name} failed:\n{done.stderr.strip()}")


def apply_patch(root: Path, patch: Path) -> None:
    """git apply a patch file (a shortcut under tests/shortcuts/, say) in the tree at root."""
    done = subprocess.run(
        ["git", "apply", str(patch)], cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SolutionError(f"git apply {patch.name} failed:\n{done.stderr.strip()}")


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
