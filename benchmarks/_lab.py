"""Shared benchmark plumbing: statistics, tables, and the lab harness the tests use too.

Every lab a benchmark starts comes from drill.lab.harness.running_lab: a copy of the lab tree
(with a reference fix applied when asked) in its own temporary directory, its state dir at
<copy>/.drill, a port offset nobody else uses, and a fresh Postgres database that is dropped
again afterwards. When Postgres does not answer, a benchmark falls back to SQLite and says so.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from pathlib import Path

import httpx

from drill.lab.harness import (
    ADMIN_DATABASE_URL,
    Lab,
    postgres_reachable,
    running_lab,
    sqlalchemy_url,
)

__all__ = [
    "ADMIN_DATABASE_URL",
    "HOST",
    "REPO_ROOT",
    "Lab",
    "backend_note",
    "free_port",
    "header",
    "http_client",
    "median",
    "percentile",
    "postgres_reachable",
    "print_table",
    "running_lab",
    "sqlalchemy_url",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1), the same definition drill verify uses."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    """The middle value (mean of the two middle values for an even count)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def backend_note() -> str:
    """'Postgres', or 'SQLite' with a printed note when Postgres does not answer."""
    if postgres_reachable():
        return "Postgres"
    print(
        f"NOTE: Postgres at {ADMIN_DATABASE_URL} is unreachable; falling back to SQLite "
        "(figures are not comparable with the Postgres baselines)."
    )
    return "SQLite"


def http_client(base_url: str, timeout: float = 30.0) -> httpx.Client:
    """A loopback client that ignores any HTTP(S)_PROXY in the environment."""
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain, aligned table: text left-aligned, numbers right-aligned."""

    # One precision per column: two decimals while all its numbers are small, else one.
    decimals = []
    for i in range(len(headers)):
        floats = [abs(r[i]) for r in rows if isinstance(r[i], float) and not math.isnan(r[i])]
        decimals.append(2 if floats and max(floats) < 10 else 1)

    def cell(value: object, column: int) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:,.{decimals[column]}f}"
        return str(value)

    cells = [[cell(v, i) for i, v in enumerate(row)] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def header(title: str, lines: Sequence[str]) -> None:
    print(title)
    print("=" * len(title))
    for text_line in lines:
        print(text_line)
    print()
