"""The lab's flags: the catalog, the live state file, and typed evaluation for services.

`Flags` (OpenFeature, OpenTelemetry, Prometheus) loads on first use: `drill flags set` reads
and writes the files and must not pay for the services' client.
"""

from typing import TYPE_CHECKING, Any

from faults._catalog import (
    CATALOG_PATH,
    DECOY,
    Catalog,
    CatalogError,
    FlagSpec,
    FlagValue,
    decoy_flag,
    load_catalog,
)
from faults._layers import (
    DEFAULT,
    INSTRUCTOR,
    LAYERS,
    PROGRAM,
    UNLAYERED,
    VERIFY,
    FlagSetting,
    LayerChange,
    LayerFlag,
    LiveFlag,
    clear_layer,
    layer_flags,
    live_flags,
    recompute_document,
    replace_layer,
    set_layer_flags,
    split_setting,
    verify_overlay,
)
from faults._state import (
    FlagStateError,
    describe,
    file_lock,
    read_document,
    reset_flags,
    set_flags,
    state_path,
    targets,
    write_document,
)

if TYPE_CHECKING:
    from faults._client import Flags


def __getattr__(name: str) -> Any:
    if name == "Flags":
        from faults._client import Flags

        return Flags
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CATALOG_PATH",
    "Catalog",
    "CatalogError",
    "DECOY",
    "DEFAULT",
    "FlagSetting",
    "FlagSpec",
    "FlagStateError",
    "FlagValue",
    "Flags",
    "INSTRUCTOR",
    "LAYERS",
    "LayerChange",
    "LayerFlag",
    "LiveFlag",
    "PROGRAM",
    "UNLAYERED",
    "VERIFY",
    "clear_layer",
    "decoy_flag",
    "describe",
    "file_lock",
    "layer_flags",
    "live_flags",
    "load_catalog",
    "read_document",
    "recompute_document",
    "replace_layer",
    "reset_flags",
    "set_flags",
    "set_layer_flags",
    "split_setting",
    "state_path",
    "targets",
    "verify_overlay",
    "write_document",
]
