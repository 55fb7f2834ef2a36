"""The flag catalog: every flag the lab knows, read from faults/flags.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FlagValue = bool | int | float | str

CATALOG_PATH = Path(__file__).with_name("flags.json")
# Where services.kit (or an adapter such as the tax-store client) injects a flag's condition.
INJECTION_POINTS = ("db.commit", "db.statement", "tax.lookup")
# The kind of the generic faults behind decoys; services/kit applies them around every route.
DECOY = "decoy"


def decoy_flag(kind: str) -> str:
    """The catalog flag of a decoy kind (drill/agenda.py's DECOY_KINDS): `generic.<kind>`."""
    return f"generic.{kind}"


class CatalogError(ValueError):
    """The catalog file is not a valid flag catalog."""


@dataclass(frozen=True)
class FlagSpec:
    """One flag: its variants, its off variant, and what it does."""

    key: str
    variants: dict[str, FlagValue]
    default_variant: str
    description: str
    service: str
    kind: str
    # Environmental conditions the kit injects around the service's code, never inside it:
    # "db.commit" (latency after each commit that wrote), "db.statement" (before each one), or
    # "tax.lookup" (each VAT rate lookup of chain-b's tax-store client, services/chain/tax.py).
    injects: str | None = None
    # What the flag does in words that name no defect: the participant kit (`drill pack
    # participants`) makes it the description. The kit's own catalog has none.
    participant_description: str | None = None

    @property
    def default_value(self) -> FlagValue:
        return self.variants[self.default_variant]

    @property
    def value_type(self) -> type:
        return type(self.default_value)

    def variant_of(self, value: FlagValue) -> str:
        """The name of the variant serving value (the first, if two serve the same)."""
        return next((name for name, v in self.variants.items() if v == value), str(value))

    def definition(self) -> dict[str, Any]:
        """The flag in flagd's schema, with its catalog default."""
        metadata = {"service": self.service, "kind": self.kind, "description": self.description}
        if self.injects is not None:
            metadata["injects"] = self.injects
        if self.participant_description is not None:
            metadata["participant_description"] = self.participant_description
        return {
            "state": "ENABLED",
            "variants": dict(self.variants),
            "defaultVariant": self.default_variant,
            "metadata": metadata,
        }


@dataclass(frozen=True)
class Catalog:
    """All flags by key."""

    flags: dict[str, FlagSpec]

    def __getitem__(self, key: str) -> FlagSpec:
        try:
            return self.flags[key]
        except KeyError:
            known = ", ".join(sorted(self.flags))
            raise KeyError(f"unknown flag {key!r}; known flags: {known}") from None

    def __contains__(self, key: object) -> bool:
        return key in self.flags

    def decoys(self) -> tuple[FlagSpec, ...]:
        """The generic-fault flags (kind decoy), in catalog order."""
        return tuple(spec for spec in self.flags.values() if spec.kind == DECOY)

    def defaults_document(self) -> dict[str, Any]:
        """A flagd document with every flag at its default (off) variant."""
        return {
            "$schema": "https://flagd.dev/schema/v0/flags.json",
            "flags": {key: spec.definition() for key, spec in self.flags.items()},
        }


def _parse_flag(key: str, raw: Any, where: str) -> FlagSpec:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: flags.{key}: expected an object")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise CatalogError(f"{where}: flags.{key}.variants: expected a non-empty object")
    types = {type(v) for v in variants.values()}
    if len(types) != 1 or not types <= {bool, int, float, str}:
        raise CatalogError(
            f"{where}: flags.{key}.variants: all variants must share one scalar type"
        )
    default = raw.get("defaultVariant")
    if default not in variants:
        raise CatalogError(f"{where}: flags.{key}.defaultVariant: {default!r} is not a variant")
    metadata = raw.get("metadata") or {}
    description = metadata.get("description")
    if not isinstance(description, str) or not description.strip():
        raise CatalogError(f"{where}: flags.{key}.metadata.description: missing")
    participant = metadata.get("participant_description")
    if participant is not None and (not isinstance(participant, str) or not participant.strip()):
        raise CatalogError(
            f"{where}: flags.{key}.metadata.participant_description: expected a non-empty string"
        )
    injects = metadata.get("injects")
    if injects is not None and injects not in INJECTION_POINTS:
        known = ", ".join(INJECTION_POINTS)
        raise CatalogError(
            f"{where}: flags.{key}.metadata.injects: {injects!r} is not one of: {known}"
        )
    if injects is not None and types != {int}:
        raise CatalogError(f"{where}: flags.{key}.variants: an injected latency is integer ms")
    return FlagSpec(
        injects=injects,
        key=key,
        variants=dict(variants),
        default_variant=str(default),
        description=description,
        participant_description=participant,
        service=str(metadata.get("service", "")),
        kind=str(metadata.get("kind", "trigger")),
    )


def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    """Read and check the catalog; errors name the flag and field at fault."""
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    flags = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(flags, dict):
        raise CatalogError(f"{path}: flags: expected an object of flag definitions")
    return Catalog({key: _parse_flag(key, raw, str(path)) for key, raw in flags.items()})
