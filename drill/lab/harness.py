"""One harness for the tests and the benchmarks: a fresh Postgres database, a running native lab.

A lab here is a copy of the lab tree (drill.solutions.copy_lab, with a reference fix applied
when asked) in a temporary directory, its state dir at <copy>/.drill, a port offset nobody else
uses and, with Postgres, a database of its own that is dropped again afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from drill import native
from drill.lab.model import LabConfig, find_root
from drill.lab.processes import free_port_offset

# The lab's Postgres: trust auth on loopback. DRILL_TEST_POSTGRES (the tests' name) or
# BENCH_ADMIN_DATABASE_URL (the benchmarks') overrides it.
ADMIN_DATABASE_URL = (
    os.environ.get("DRILL_TEST_POSTGRES")
    or os.environ.get("BENCH_ADMIN_DATABASE_URL")
    or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def sqlalchemy_url(url: str) -> str:
    """The libpq spelling with SQLAlchemy's psycopg driver named, as services.kit.db does."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _admin_engine(timeout: int = 5) -> Engine:
    return create_engine(
        sqlalchemy_url(ADMIN_DATABASE_URL),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": timeout},
    )


def _admin(*statements: str, timeout: int = 5) -> None:
    engine = _admin_engine(timeout)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def postgres_reachable() -> bool:
    """Whether the admin database answers within a few seconds."""
    try:
        _admin("SELECT 1", timeout=3)
    except Exception:
        return False
    return True


def database_url(name: str) -> str:
    """The URL of database name on the admin database's server."""
    return sqlalchemy_url(ADMIN_DATABASE_URL).rsplit("/", 1)[0] + f"/{name}"


def fresh_database(name: str) -> str:
    """An empty Postgres database called name (dropped first if left over); its URL."""
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(name: str) -> None:
    """DROP DATABASE, disconnecting anything still attached (Postgres 13+)."""
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temporary_database(prefix: str = "drill") -> Iterator[str]:
    """A fresh database named <prefix>_<random> for the block; its URL. Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = fresh_database(name)
    try:
        yield url
    finally:
        drop_database(name)


def lab_env(
    root: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    port_offset: int | None = None,
) -> dict[str, str]:
    """The environment of a drill command on the lab under root: its state dir, free ports,
    its database and cache, and no stray endpoints from the caller's shell."""
    offset = free_port_offset() if port_offset is None else port_offset
    return LabConfig(
        root, root / ".drill", offset, database_url=database_url, redis_url=redis_url
    ).env()


@dataclass
class Lab:
    """A running native lab: where its copy lives, how to reach it, which database it uses."""

    label: str
    copy: Path
    config: LabConfig
    backend: str

    @property
    def database_url(self) -> str | None:
        return self.config.database_url

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def url(self, service: str) -> str:
        """A service's base URL in this lab."""
        return self.config.url(native.SERVICES[service])

    @property
    def ledger_url(self) -> str:
        return self.url("ledger")

    def engine(self) -> Engine:
        """An engine on the lab's database (Postgres or the ledger's SQLite file)."""
        if self.database_url:
            return create_engine(sqlalchemy_url(self.database_url))
        return create_engine(f"sqlite:///{self.state_dir / 'ledger.db'}")

    def env(self) -> dict[str, str]:
        """The environment a drill CLI subprocess needs to find this lab."""
        return self.config.env()


def source_tree() -> Path:
    """The lab checkout this package runs from (editable install), else the one around cwd."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "scenarios.yaml").is_file() else find_root(Path.cwd())


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
    source: Path | None = None,
) -> Iterator[Lab]:
    """Copy the lab (applying solutions/<solution>.patch, then patches), start it, stop it after.

    backend is "Postgres" (a database of its own) or "SQLite" (a file in the state dir). The
    copy, its state and its database exist only for the duration of the block.
    """
    from drill.solutions import copy_lab

    label = "shipped" if solution is None else f"patched ({solution})"
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="drill-lab-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        copy = copy_lab(
            source or source_tree(), workdir / "lab", solution=solution, patches=patches
        )
        url = stack.enter_context(temporary_database()) if backend == "Postgres" else None
        config = LabConfig(
            root=copy,
            state_dir=copy / ".drill",
            port_offset=free_port_offset(),
            database_url=url,
            otlp_endpoint=otlp_endpoint,
            redis_url=redis_url,
        )
        stack.callback(native.down, config)
        native.up(config, only=only, ready_timeout=ready_timeout)
        yield Lab(label, copy, config, backend)
