"""The lab's flags: the catalog, the live state file, and typed evaluation for services."""

from faults._catalog import CATALOG_PATH, Catalog, CatalogError, FlagSpec, FlagValue, load_catalog
from faults._client import Flags
from faults._state import (
    FlagStateError,
    describe,
    read_document,
    reset_flags,
    restore_document,
    set_flags,
    state_path,
    write_document,
)

__all__ = [
    "CATALOG_PATH",
    "Catalog",
    "CatalogError",
    "FlagSpec",
    "FlagStateError",
    "FlagValue",
    "Flags",
    "describe",
    "load_catalog",
    "read_document",
    "reset_flags",
    "restore_document",
    "set_flags",
    "state_path",
    "write_document",
]
