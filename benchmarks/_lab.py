"""Shared benchmark plumbing: a native lab from a (possibly patched) copy, its database, ports.

Every lab a benchmark starts lives in its own temporary directory: a copy of the lab tree
(drill.solutions.copy_lab, with a reference fix applied when asked), its state dir at
<copy>/.drill, a port offset nobody else uses, and a fresh Postgres database that is dropped
again afterwards. When Postgres does not answer, the lab falls back to SQLite and says so.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from drill import native
from drill.solutions import copy_lab

REPO_ROOT = Path(__file__).resolve().parent.parent
# The lab's Postgres: trust auth on loopback. BENCH_ADMIN_DATABASE_URL overrides it.
ADMIN_DATABASE_URL = os.environ.get(
    "BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
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


def sqlalchemy_url(url: str) -> str:
    """The libpq spelling with SQLAlchemy's psycopg driver named, as services.kit.db does."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def postgres_reachable() -> bool:
    engine = create_engine(sqlalchemy_url(ADMIN_DATABASE_URL), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _admin_engine() -> Engine:
    return create_engine(
        sqlalchemy_url(ADMIN_DATABASE_URL),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )


def create_database(prefix: str = "bench") -> tuple[str, str]:
    """CREATE DATABASE <prefix>_<random>; returns (name, libpq URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    base = ADMIN_DATABASE_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    """DROP DATABASE, disconnecting anything still attached (Postgres 13+)."""
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@dataclass
class Lab:
    """A running native lab: where its copy lives, how to reach it, which database it uses."""

    label: str
    copy: Path
    config: native.LabConfig
    database_url: str | None
    backend: str

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def ledger_url(self) -> str:
        return self.config.url(native.SERVICES["ledger"])

    def engine(self) -> Engine:
        """An engine on the lab's database (Postgres or the ledger's SQLite file)."""
        if self.database_url:
            return create_engine(sqlalchemy_url(self.database_url))
        return create_engine(f"sqlite:///{self.state_dir / 'ledger.db'}")

    def env(self) -> dict[str, str]:
        """The environment a drill CLI subprocess needs to find this lab."""
        env = dict(os.environ)
        env["DRILL_STATE_DIR"] = str(self.state_dir)
        env["DRILL_PORT_OFFSET"] = str(self.config.port_offset)
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        if self.config.redis_url:
            env["REDIS_URL"] = self.config.redis_url
        else:
            env.pop("REDIS_URL", None)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        else:
            env.pop("DATABASE_URL", None)
        return env


def backend_note() -> str:
    """'Postgres', or 'SQLite' with a printed note when Postgres does not answer."""
    if postgres_reachable():
        return "Postgres"
    print(
        f"NOTE: Postgres at {ADMIN_DATABASE_URL} is unreachable; falling back to SQLite "
        "(figures are not comparable with the Postgres baselines)."
    )
    return "SQLite"


@contextlib.contextmanager
def running_lab(
    solution: str | None = None,
    *,
    backend: str = "Postgres",
    otlp_endpoint: str | None = None,
    only: list[str] | None = None,
    ready_timeout: float = 60,
    patches: Sequence[Path] = (),
    redis_url: str | None = None,
) -> Iterator[Lab]:
    """Copy the lab (applying solutions/<solution>.patch, then patches), start it, stop it after.

    The copy, its state and its database exist only for the duration of the block.
    """
    label = "shipped" if solution is None else f"patched ({solution})"
    workdir = Path(tempfile.mkdtemp(prefix="drill-bench-"))
    db_name: str | None = None
    config: native.LabConfig | None = None
    try:
        copy = copy_lab(REPO_ROOT, workdir / "lab", solution=solution, patches=patches)
        database_url = None
        if backend == "Postgres":
            db_name, database_url = create_database()
        config = native.LabConfig(
            root=copy,
            state_dir=copy / ".drill",
            port_offset=native.free_port_offset(),
            database_url=database_url,
            otlp_endpoint=otlp_endpoint,
            redis_url=redis_url,
        )
        native.up(config, only=only, ready_timeout=ready_timeout)
        yield Lab(label, copy, config, database_url, backend)
    finally:
        try:
            if config is not None:
                native.down(config)
        finally:
            try:
                if db_name is not None:
                    drop_database(db_name)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)


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
