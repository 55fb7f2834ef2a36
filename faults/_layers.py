"""Layered flag state: the program, the instructor and a verify run each own one layer.

Each writer changes only its own file, `$DRILL_STATE_DIR/layers/<layer>.json`, and every change
recomputes the one document services read, `flags.json`: the catalog defaults, then each layer
in `LAYERS` order (a later layer wins). A layer with `mask` first puts every flag back to its
default, which is how a verify run keeps its verdict independent of whatever else is on.

A layer file that cannot be read (bad JSON, a hand edit gone wrong) counts as empty, with a
logged warning naming it: its flags fall back to their defaults, the safe direction for faults,
and no writer is blocked in the middle of a workshop. The next write moves it aside to
`<layer>.json.corrupt` so it can still be inspected. An entry naming a flag or variant the
catalog does not know is skipped the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faults._catalog import Catalog
from faults._state import (
    STATE_FILE_NAME,
    FlagStateError,
    _locked,
    describe,
    flag_definition,
    read_document,
    write_document,
)

# (variant, percent) or (variant, percent, where): percent None = everyone, where None = every
# context.
FlagSetting = tuple[str, float | None] | tuple[str, float | None, Mapping[str, str] | None]

PROGRAM, INSTRUCTOR, VERIFY = "program", "instructor", "verify"
# Precedence: a later layer wins, so a verify run's overlay beats the instructor, who beats the
# program.
LAYERS = (PROGRAM, INSTRUCTOR, VERIFY)
LAYERS_DIR = "layers"
DEFAULT = "default"
# A live value that no layer explains: flags.json was written directly (set_flags) or by hand.
UNLAYERED = "flags.json"

log = logging.getLogger("faults")


@dataclass(frozen=True)
class LayerFlag:
    """One flag as a layer sets it, and who set it when."""

    variant: str
    percent: float | None
    by: str
    at: str
    # Context attributes the flag is limited to (a decoy's service and route); None = everyone.
    where: dict[str, str] | None = None

    @property
    def setting(self) -> FlagSetting:
        return (self.variant, self.percent, self.where)


@dataclass(frozen=True)
class Layer:
    """The flags one writer sets; `mask` puts every other flag below it at its default."""

    flags: dict[str, LayerFlag] = field(default_factory=dict)
    mask: bool = False
    # Verify's overlay: the run holding it (run token, pid, host, by, at).
    owner: dict[str, Any] | None = None

    @property
    def empty(self) -> bool:
        return not self.flags and not self.mask


@dataclass(frozen=True)
class LiveFlag:
    """A flag's live definition and the layer it comes from ("default" when none sets it)."""

    definition: dict[str, Any]
    layer: str
    by: str | None = None
    at: str | None = None


def layer_path(directory: Path, layer: str) -> Path:
    return directory / LAYERS_DIR / f"{layer}.json"


def _check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise FlagStateError(f"unknown flag layer {layer!r}; layers are: {', '.join(LAYERS)}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def split_setting(setting: FlagSetting) -> tuple[str, float | None, dict[str, str] | None]:
    """(variant, percent, where) of either form of a setting."""
    where = setting[2] if len(setting) == 3 else None
    return setting[0], setting[1], dict(where) if where else None


def _entries(catalog: Catalog, changes: Mapping[str, FlagSetting], by: str) -> dict[str, LayerFlag]:
    """Validated entries: an unknown flag, variant or share raises before anything is written."""
    at = _now()
    entries = {}
    for key, setting in changes.items():
        variant, percent, where = split_setting(setting)
        flag_definition(catalog, key, variant, percent, where)
        share = None if percent is None else float(percent)
        entries[key] = LayerFlag(variant, share, by, at, where)
    return entries


def _parse_entry(path: Path, catalog: Catalog, key: str, raw: Any) -> LayerFlag | None:
    """One entry of a layer file, or None (logged) when it is malformed or unknown."""
    try:
        variant, percent, where = raw["variant"], raw.get("percent"), raw.get("where")
        if not isinstance(variant, str) or not isinstance(percent, int | float | None):
            raise TypeError("variant must be a string and percent a number or null")
        if where is not None and not (
            isinstance(where, dict) and all(isinstance(v, str) for v in where.values())
        ):
            raise TypeError("where must be an object of strings or null")
        flag_definition(catalog, key, variant, percent, where)
        by, at = str(raw.get("by", "")), str(raw.get("at", ""))
        return LayerFlag(variant, percent, by, at, where or None)
    except (FlagStateError, TypeError, KeyError, AttributeError) as exc:
        log.warning("flag layer %s: entry %r skipped: %s", path, key, exc)
        return None


def _parse_layer(path: Path, catalog: Catalog) -> Layer:
    """A layer file's content; raises ValueError when it is not a layer document."""
    raw = json.loads(path.read_text())
    flags = raw.get("flags", {}) if isinstance(raw, dict) else None
    if not isinstance(flags, dict):
        raise ValueError("expected an object with a 'flags' object")
    parsed = {key: _parse_entry(path, catalog, key, entry) for key, entry in flags.items()}
    owner = raw.get("owner")
    return Layer(
        flags={key: entry for key, entry in parsed.items() if entry is not None},
        mask=raw.get("mask") is True,
        owner=owner if isinstance(owner, dict) else None,
    )


def _read_layer(directory: Path, layer: str, catalog: Catalog, *, set_aside: bool) -> Layer:
    """A layer, empty when its file is absent or unreadable (logged; set aside by writers)."""
    path = layer_path(directory, layer)
    try:
        return _parse_layer(path, catalog)
    except FileNotFoundError:
        return Layer()
    except (ValueError, OSError) as exc:
        if set_aside:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("flag layer %s is unreadable (%s); counted as empty, kept as %s",
                        path, exc, aside)  # fmt: skip
        else:
            log.warning("flag layer %s is unreadable (%s); counted as empty", path, exc)
        return Layer()


def _migrated(directory: Path, catalog: Catalog) -> dict[str, Layer]:
    """The layers of a state dir written before layers existed: its live flags, as the instructor's.

    Nothing is silently lost: whatever was on stays on, and `drill flags reset` clears it.
    """
    document = read_document(directory / STATE_FILE_NAME, catalog)
    at = _now()
    flags = {}
    for key, definition in document["flags"].items():
        variant, _, share = describe(definition)
        if variant == catalog[key].default_variant and share is None:
            continue
        try:
            flag_definition(catalog, key, variant, share)
        except FlagStateError as exc:
            log.warning("flag state %s: %r not carried into the layers: %s", directory, key, exc)
            continue
        flags[key] = LayerFlag(variant, share, "migrated", at)
    return {INSTRUCTOR: Layer(flags)} if flags else {}


def _load_layers(
    directory: Path, catalog: Catalog, *, set_aside: bool = False
) -> tuple[dict[str, Layer], bool]:
    """Every layer by name, and whether they were derived from a pre-layers flags.json."""
    if not (directory / LAYERS_DIR).is_dir():
        return _migrated(directory, catalog), True
    layers = {name: _read_layer(directory, name, catalog, set_aside=set_aside) for name in LAYERS}
    return {name: layer for name, layer in layers.items() if not layer.empty}, False


def _effective(catalog: Catalog, layers: Mapping[str, Layer]) -> dict[str, LiveFlag]:
    """Each flag's definition after the catalog defaults and every layer in order."""
    specs = catalog.flags.items()
    live = {key: LiveFlag(spec.definition(), DEFAULT) for key, spec in specs}
    for name in LAYERS:
        layer = layers.get(name)
        if layer is None:
            continue
        if layer.mask:
            by = (layer.owner or {}).get("by")
            live = {key: LiveFlag(spec.definition(), name, by) for key, spec in specs}
        for key, entry in layer.flags.items():
            definition = flag_definition(catalog, key, entry.variant, entry.percent, entry.where)
            live[key] = LiveFlag(definition, name, entry.by, entry.at)
    return live


def _document(catalog: Catalog, layers: Mapping[str, Layer]) -> dict[str, Any]:
    """The flagd document the layers add up to."""
    document = catalog.defaults_document()
    document["flags"] = {key: flag.definition for key, flag in _effective(catalog, layers).items()}
    return document


def _write_layer(directory: Path, name: str, layer: Layer | None) -> None:
    path = layer_path(directory, name)
    if layer is None or layer.empty:
        path.unlink(missing_ok=True)
        return
    flags: dict[str, dict[str, Any]] = {}
    for key, e in layer.flags.items():
        flags[key] = {"variant": e.variant, "percent": e.percent, "by": e.by, "at": e.at}
        if e.where:
            flags[key]["where"] = e.where
    content: dict[str, Any] = {"layer": name, "mask": layer.mask, "flags": flags}
    if layer.owner is not None:
        content["owner"] = layer.owner
    write_document(path, content)


@contextlib.contextmanager
def _transaction(
    directory: Path, catalog: Catalog, *, always: bool = True
) -> Iterator[dict[str, Layer]]:
    """The layers, under the lock; on a clean exit, changed ones are saved and flags.json rewritten.

    The lock spans the read, the change and the recompute, so two writers never lose each
    other's change. When the body raises, nothing is written; with `always` off, nothing is
    written either when the body changed no layer and flags.json exists.
    """
    with _locked(directory):
        layers, migrated = _load_layers(directory, catalog, set_aside=True)
        before = dict(layers)
        yield layers
        changed = [name for name in LAYERS if layers.get(name) is not before.get(name)]
        if not (always or migrated or changed or not (directory / STATE_FILE_NAME).exists()):
            return
        (directory / LAYERS_DIR).mkdir(parents=True, exist_ok=True)
        for name in LAYERS:
            if migrated or name in changed:
                _write_layer(directory, name, layers.get(name))
        write_document(directory / STATE_FILE_NAME, _document(catalog, layers))


def set_layer_flags(
    directory: Path,
    catalog: Catalog,
    layer: str,
    changes: Mapping[str, FlagSetting],
    *,
    by: str | None = None,
) -> dict[str, Any]:
    """Set flags in one layer (others untouched); returns the effective document written."""
    _check_layer(layer)
    if layer == VERIFY:
        raise FlagStateError("the verify layer is a run's overlay: use verify_overlay")
    entries = _entries(catalog, changes, by or layer)
    with _transaction(directory, catalog) as layers:
        current = layers.get(layer, Layer())
        layers[layer] = Layer({**current.flags, **entries}, current.mask, current.owner)
    return _document(catalog, layers)


@dataclass(frozen=True)
class LayerChange:
    """What a replace changed in a layer: flags set anew or to another variant, flags let go."""

    set: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    cleared: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.set and not self.cleared


def replace_layer(
    directory: Path,
    catalog: Catalog,
    layer: str,
    flags: Mapping[str, FlagSetting],
    *,
    by: str | None = None,
) -> LayerChange:
    """Make a layer hold exactly `flags`, in one locked write (services never see half of it).

    An entry that already holds its variant and share keeps who set it and when; when nothing
    changes, nothing is written (the runner calls this on every tick).
    """
    _check_layer(layer)
    if layer == VERIFY:
        raise FlagStateError("the verify layer is a run's overlay: use verify_overlay")
    entries = _entries(catalog, flags, by or layer)
    with _transaction(directory, catalog, always=False) as layers:
        current = layers.get(layer, Layer())
        kept: dict[str, LayerFlag] = {}
        changed: dict[str, tuple[str, float | None]] = {}
        for key, entry in entries.items():
            old = current.flags.get(key)
            if old is not None and old.setting == entry.setting:
                kept[key] = old
            else:
                kept[key] = entry
                changed[key] = (entry.variant, entry.percent)
        cleared = tuple(sorted(set(current.flags) - set(entries)))
        if changed or cleared:
            layers[layer] = Layer(kept, current.mask, current.owner)
    return LayerChange(changed, cleared)


def layer_flags(directory: Path, catalog: Catalog, layer: str) -> dict[str, LayerFlag]:
    """The flags one layer sets, read without the lock (a reader's view)."""
    _check_layer(layer)
    layers, _ = _load_layers(directory, catalog)
    return dict(layers.get(layer, Layer()).flags)


def clear_layer(
    directory: Path, catalog: Catalog, layer: str, flags: list[str] | None = None
) -> list[str]:
    """Take a layer's flags out (all, or only those named); returns the flags it held and let go."""
    _check_layer(layer)
    for key in flags or ():
        if key not in catalog:
            raise FlagStateError(f"unknown flag {key!r}; see `drill flags list`")
    with _transaction(directory, catalog) as layers:
        current = layers.get(layer, Layer())
        gone = set(current.flags) if flags is None else set(current.flags) & set(flags)
        kept = {key: entry for key, entry in current.flags.items() if key not in gone}
        # Clearing a whole layer also drops its mask: `drill flags reset --all` after a crash.
        layers[layer] = Layer(kept, current.mask, current.owner) if flags is not None else Layer()
    return sorted(gone)


def recompute_document(directory: Path, catalog: Catalog) -> dict[str, Any]:
    """Write flags.json from the layers (defaults when there are none); returns it."""
    with _transaction(directory, catalog) as layers:
        pass
    return _document(catalog, layers)


def live_flags(directory: Path, catalog: Catalog) -> dict[str, LiveFlag]:
    """What services read for each flag, and the layer it comes from.

    The value is flags.json's, the services' truth; when no layer explains it (it was written
    directly or by hand) its layer is `UNLAYERED`.
    """
    layers, _ = _load_layers(directory, catalog)
    expected = _effective(catalog, layers)
    document = read_document(directory / STATE_FILE_NAME, catalog)
    live = {}
    for key, definition in document["flags"].items():
        flag = expected[key]
        if describe(definition) != describe(flag.definition):
            flag = LiveFlag(definition, UNLAYERED)
        live[key] = flag
    return live


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether the run holding an overlay may still be running (another host: assume so)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def verify_overlay(
    directory: Path,
    catalog: Catalog,
    changes: Mapping[str, tuple[str, float | None]],
    *,
    by: str,
) -> Iterator[dict[str, Any]]:
    """For the block, serve exactly `changes` with every other flag at its default.

    Yields the effective document. On the way out, also on an exception or Ctrl-C, exactly
    this overlay is removed: the program's and the instructor's layers apply again, with any
    change they made meanwhile. A run still holding the overlay makes this one refuse; an
    overlay left by a run that died is taken over (logged).
    """
    entries = _entries(catalog, changes, by)
    token = uuid.uuid4().hex
    owner = {"run": token, "pid": os.getpid(), "host": socket.gethostname(), "by": by, "at": _now()}
    try:
        with _transaction(directory, catalog) as layers:
            held = layers.get(VERIFY)
            if held is not None and held.owner is not None and _alive(held.owner):
                raise FlagStateError(
                    f"another run ({held.owner.get('by')}, pid {held.owner.get('pid')} on "
                    f"{held.owner.get('host')}, since {held.owner.get('at')}) holds the verify "
                    "overlay; wait for it, or clear it with `drill flags reset --all` if it is gone"
                )
            if held is not None:
                log.warning("flag layer %s: overlay left by a run that is gone; replaced",
                            layer_path(directory, VERIFY))  # fmt: skip
            layers[VERIFY] = Layer(entries, mask=True, owner=owner)
        yield _document(catalog, layers)
    finally:
        # Also when the claim itself was interrupted; a token no one else has keeps it exact.
        with _transaction(directory, catalog) as layers:
            held = layers.get(VERIFY)
            # `drill flags reset --all` may have cleared it meanwhile, and a later run taken it.
            if held is not None and (held.owner or {}).get("run") == token:
                del layers[VERIFY]
