"""The live flag state: $DRILL_STATE_DIR/flags.json, written atomically.

The lab's writers (runner, instructor, verify) go through the layers in faults._layers, which
recompute this file; `set_flags` and `reset_flags` write it directly, for a state dir that only
one writer uses (a test's or a benchmark's own lab).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from faults._catalog import Catalog, FlagSpec, FlagValue

STATE_FILE_NAME = "flags.json"
BASIS_POINTS = 10_000


class FlagStateError(ValueError):
    """A flag change names an unknown flag, variant or share."""


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: the argument, else $DRILL_STATE_DIR, else ./.drill."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get("DRILL_STATE_DIR", ".drill"))


def state_path(directory: str | os.PathLike[str] | None = None) -> Path:
    return state_dir(directory) / STATE_FILE_NAME


@contextlib.contextmanager
def file_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_file (made with its directory) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _locked(directory: Path) -> contextlib.AbstractContextManager[None]:
    # The instructor's CLI and the scenario runner may write at the same moment.
    return file_lock(directory / ".flags.lock")


def _let_others_read(directory: Path) -> None:
    """The compose lab's containers read the flags as another user (uid 10001) through a bind
    mount of this directory: it must let others in whatever the umask (with 077, flips never
    arrived, and only a gauge at 0 said so). The flags are not secret; the runner's token files
    keep their own 0600."""
    mode = directory.stat().st_mode & 0o777
    if mode & 0o005 != 0o005:
        directory.chmod(mode | 0o005)


def write_document(path: Path, document: Mapping[str, Any]) -> None:
    """Write a flagd document so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _let_others_read(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".flags-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_document(path: Path, catalog: Catalog) -> dict[str, Any]:
    """The live document, or the catalog defaults when there is no readable state."""
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return catalog.defaults_document()
    if not isinstance(document, dict) or not isinstance(document.get("flags"), dict):
        return catalog.defaults_document()
    # Flags added to the catalog since the state was written appear at their default.
    merged = catalog.defaults_document()
    for key, definition in document["flags"].items():
        if key in catalog:
            merged["flags"][key] = definition
    return merged


def flag_definition(
    catalog: Catalog,
    key: str,
    variant: str,
    percent: float | None = None,
    where: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A flag set to a variant, for everyone or for a share of evaluation contexts; with `where`,
    only for contexts whose attributes equal it (a decoy's service and route)."""
    spec = catalog[key] if key in catalog else None
    if spec is None:
        raise FlagStateError(f"unknown flag {key!r}; see `drill flags list`")
    if variant not in spec.variants:
        choices = ", ".join(spec.variants)
        raise FlagStateError(f"flag {key!r} has no variant {variant!r}; choose one of: {choices}")
    definition = spec.definition()
    if percent is not None and not 0 < percent <= 100:
        raise FlagStateError(f"flag {key!r}: percent must be in (0, 100], got {percent}")
    if where and variant != spec.default_variant:
        # flagd's JSON logic: the variant (or its share) where every attribute matches, else off.
        tests = [{"==": [{"var": name}, value]} for name, value in sorted(where.items())]
        matched = tests[0] if len(tests) == 1 else {"and": tests}
        served = (
            variant if percent is None or percent >= 100 else _fractional(spec, variant, percent)
        )
        definition["targeting"] = {"if": [matched, served, spec.default_variant]}
        return definition
    if percent is None or percent >= 100:
        definition["defaultVariant"] = variant
        return definition
    if variant == spec.default_variant:
        return definition
    definition["targeting"] = _fractional(spec, variant, percent)
    return definition


def _fractional(spec: FlagSpec, variant: str, percent: float) -> dict[str, Any]:
    # flagd's fractional hashes the targeting key, so one user (or request) stays in one bucket.
    # Its weights must be integers (a fractional weight silently serves the default): basis
    # points.
    share = round(percent * 100)
    return {"fractional": [[variant, share], [spec.default_variant, BASIS_POINTS - share]]}


def set_flags(
    directory: Path,
    catalog: Catalog,
    changes: Mapping[str, tuple[str, float | None]],
    *,
    reset_others: bool = False,
) -> dict[str, Any]:
    """Set flags to variants (optionally for a share) in flags.json itself; returns it.

    This bypasses the layers: the next layer change recomputes the file without it.
    """
    definitions = {
        key: flag_definition(catalog, key, variant, percent)
        for key, (variant, percent) in changes.items()
    }
    path = directory / STATE_FILE_NAME
    with _locked(directory):
        document = catalog.defaults_document() if reset_others else read_document(path, catalog)
        document["flags"].update(definitions)
        write_document(path, document)
    return document


def reset_flags(directory: Path, catalog: Catalog) -> None:
    """Every flag back to its catalog default in flags.json itself (the layers stay)."""
    with _locked(directory):
        write_document(directory / STATE_FILE_NAME, catalog.defaults_document())


def targets(definition: Mapping[str, Any]) -> dict[str, str]:
    """The context attributes a targeted definition (flag_definition's `where`) is limited to."""
    targeting = definition.get("targeting") or {}
    branches = targeting.get("if") if isinstance(targeting, dict) else None
    if not (isinstance(branches, list) and branches and isinstance(branches[0], dict)):
        return {}
    condition = branches[0]
    tests = condition.get("and", [condition])
    where = {}
    for test in tests if isinstance(tests, list) else []:
        operands = test.get("==") if isinstance(test, dict) else None
        if isinstance(operands, list) and len(operands) == 2 and isinstance(operands[0], dict):
            where[str(operands[0].get("var"))] = str(operands[1])
    return where


def describe(definition: Mapping[str, Any]) -> tuple[str, FlagValue | None, float | None]:
    """The variant a definition serves, its value, and the share it targets (None = everyone)."""
    targeting = definition.get("targeting") or {}
    branches = targeting.get("if") if isinstance(targeting, dict) else None
    if isinstance(branches, list) and len(branches) == 3:
        # A targeted definition (flag_definition's `where`): describe what the match serves.
        served = branches[1]
        if isinstance(served, str):
            return served, definition.get("variants", {}).get(served), None
        targeting = served
    fractional = targeting.get("fractional") if isinstance(targeting, dict) else None
    variants = definition.get("variants", {})
    if isinstance(fractional, list) and fractional and isinstance(fractional[0], list):
        buckets = [b for b in fractional if isinstance(b, list) and len(b) == 2]
        total = sum(float(weight) for _, weight in buckets) or 1.0
        variant, weight = buckets[0]
        return str(variant), variants.get(variant), 100 * float(weight) / total
    variant = str(definition.get("defaultVariant"))
    return variant, variants.get(variant), None
