"""The service's database: Postgres from DATABASE_URL, else SQLite under the state dir."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateTable

from services.kit.settings import ServiceSettings

log = logging.getLogger("db")


def database_url(settings: ServiceSettings) -> str:
    url = settings.database_url
    if not url:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{settings.state_dir.resolve() / settings.service_name}.db"
    # Accept the libpq spelling instructors paste; SQLAlchemy wants the driver named.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_db_engine(settings: ServiceSettings) -> Engine:
    url = database_url(settings)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the single writer; the lab's data is disposable.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # 20 connections: the threadpool runs up to 40 handlers, most of them short.
    # No pre-ping: it costs a round trip per checkout; a connection lost to a database
    # restart fails one request and is then replaced.
    return create_engine(url, pool_size=10, max_overflow=10, pool_recycle=300)


def schema_fingerprint(engine: Engine, metadata: MetaData) -> str:
    ddl = "\n".join(
        str(CreateTable(table).compile(dialect=engine.dialect)) for table in metadata.sorted_tables
    )
    return hashlib.sha256(ddl.encode()).hexdigest()[:16]


# "drill" in ASCII: the advisory lock that serialises schema changes across services.
_SCHEMA_LOCK = 0x6472696C6C


def ensure_schema(engine: Engine, metadata: MetaData, service: str) -> None:
    """Create the service's tables; recreate them when the models changed (lab data is disposable).

    Participants change models while fixing a drill; a stale table would fail in confusing ways.
    """
    registry = MetaData()
    lab_schema = Table(
        "lab_schema",
        registry,
        Column("service", String(64), primary_key=True),
        Column("fingerprint", String(64), nullable=False),
    )
    fingerprint = schema_fingerprint(engine, metadata)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Services sharing one database start together; concurrent CREATE TABLE IF NOT
            # EXISTS of lab_schema collide in the catalog. One at a time, until commit.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        registry.create_all(conn)
        stored = conn.execute(
            text("SELECT fingerprint FROM lab_schema WHERE service = :s"), {"s": service}
        ).scalar()
        if stored != fingerprint:
            if stored is not None:
                log.warning(
                    "%s models changed; recreating its tables (lab data is disposable)",
                    service,
                )
                metadata.drop_all(conn)
            metadata.create_all(conn)
            conn.execute(lab_schema.delete().where(lab_schema.c.service == service))
            conn.execute(lab_schema.insert().values(service=service, fingerprint=fingerprint))


def check_database(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


_wrote = contextvars.ContextVar("wrote", default=False)
_WRITES = ("INSERT", "UPDATE", "DELETE")


def add_commit_latency(
    engine: Engine, sessions: sessionmaker[Session], delay_ms: Callable[[], int]
) -> None:
    """After a commit that wrote, wait `delay_ms()`: a slow synchronous replica acknowledgement."""

    @event.listens_for(engine, "after_cursor_execute")
    def _mark_write(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # rowcount is not known yet for INSERT ... RETURNING, so any DML counts as a write.
        if statement.lstrip()[:6].upper() in _WRITES:
            _wrote.set(True)

    @event.listens_for(sessions, "after_rollback")
    def _discard(_session: Session) -> None:
        _wrote.set(False)

    @event.listens_for(sessions, "after_commit")
    def _slow_ack(_session: Session) -> None:
        if _wrote.get():
            _wrote.set(False)
            delay = delay_ms()
            if delay > 0:
                time.sleep(delay / 1000)


def add_query_latency(engine: Engine, delay_ms: Callable[[], int]) -> None:
    """Before each statement, wait `delay_ms()`: a database one network hop further away."""

    @event.listens_for(engine, "before_cursor_execute")
    def _round_trip(*_args: Any) -> None:
        delay = delay_ms()
        if delay > 0:
            time.sleep(delay / 1000)


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
