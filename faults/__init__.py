"""The lab's flags: the catalog, the live state file, and typed evaluation for services."""

from faults._catalog import CATALOG_PATH, Catalog, CatalogError, FlagSpec, FlagValue, load_catalog
from faults._client import Flags
from faults._layers import (
    DEFAULT,
    INSTRUCTOR,
    LAYERS,
    PROGRAM,
    UNLAYERED,
    VERIFY,
    LiveFlag,
    clear_layer,
    live_flags,
    recompute_document,
    set_layer_flags,
    verify_overlay,
)
from faults._state import (
    FlagStateError,
    describe,
    read_document,
    reset_flags,
    set_flags,
    state_path,
    write_document,
)

__all__ = [
    "CATALOG_PATH",
    "Catalog",
    "CatalogError",
    "DEFAULT",
    "FlagSpec",
    "FlagStateError",
    "FlagValue",
    "Flags",
    "INSTRUCTOR",
    "LAYERS",
    "LiveFlag",
    "PROGRAM",
    "UNLAYERED",
    "VERIFY",
    "clear_layer",
    "describe",
    "live_flags",
    "load_catalog",
    "read_document",
    "recompute_document",
    "reset_flags",
    "set_flags",
    "set_layer_flags",
    "state_path",
    "verify_overlay",
    "write_document",
]
