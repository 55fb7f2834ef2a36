"""A read-only attribute for classes that say where files live: a fixed name under a directory."""

from __future__ import annotations

from pathlib import Path
from typing import overload


class PathUnder:
    """The path `name` under the instance's directory attribute `base`, read-only.

    `journal = PathUnder("directory", "journal.jsonl")` reads as `self.directory / "journal.jsonl"`
    on every access, so the attribute follows the directory it hangs from.
    """

    def __init__(self, base: str, name: str) -> None:
        self.base = base
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type[object]) -> PathUnder: ...

    @overload
    def __get__(self, instance: object, owner: type[object]) -> Path: ...

    def __get__(self, instance: object | None, owner: type[object]) -> PathUnder | Path:
        if instance is None:
            return self
        directory: Path = getattr(instance, self.base)
        return directory / self.name

    def __set__(self, instance: object, value: object) -> None:
        raise AttributeError(f"read-only: the path {self.name!r} under {self.base}")
