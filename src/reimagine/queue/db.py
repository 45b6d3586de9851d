"""The database handle: engine, dialect, migrations, and the one read path and one write path every query takes.

SQLite (WAL, the embedded default) and PostgreSQL share one schema (Alembic, `reimagine/migrations`) and one set of
SQL statements; their differences end here and in the claim's `FOR UPDATE SKIP LOCKED`. Queries run inside
`Database.read()` (a snapshot) or `Database.write()` (a transaction that commits unless the block raises), both of
which yield a `Conn`: its `rows`/`first`/`scalar`/`changed` take a statement and `:name` parameters.

On SQLite a `Conn` wraps a plain driver connection of this thread (`queue/sqlite.py`): SQLAlchemy's pool checkout,
begin/commit events and result wrapping cost two to three times the single-row statements the API and the workers
run hundreds of times a second. On PostgreSQL it wraps a SQLAlchemy connection (the network dominates).
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from reimagine.queue import sqlite
from reimagine.queue.notify import CHANNEL

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")
#: Query parameters: what `:name` placeholders take.
Params = Mapping[str, object]


class Row(Protocol):
    """A result row: by position (`row[0]`) or by column name (`row._mapping["id"]`)."""

    def __getitem__(self, index: int) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    @property
    def _mapping(self) -> Mapping[str, Any]: ...


class Conn:
    """One open transaction (read or write) on either database; the only way queries reach a driver."""

    __slots__ = ("_raw", "_sa", "is_sqlite")

    def __init__(self, connection: sqlite3.Connection | Connection) -> None:
        self._raw = connection if isinstance(connection, sqlite3.Connection) else None
        self._sa = connection if isinstance(connection, Connection) else None
        self.is_sqlite = self._raw is not None

    def rows(self, statement: sa.TextClause, params: Params | None = None) -> list[Row]:
        """All rows the statement returns (none for a statement without `RETURNING`)."""
        if self._sa is not None:
            result = self._sa.execute(statement, _args(params))
            return cast("list[Row]", result.all()) if result.returns_rows else []
        assert self._raw is not None
        cursor = self._raw.execute(statement.text, _args(params))
        try:
            rows = cursor.fetchall()
            if cursor.description is None:
                return []
            names = {d[0]: i for i, d in enumerate(cursor.description)}
            return [_DriverRow(names, row) for row in rows]
        finally:
            cursor.close()

    def first(self, statement: sa.TextClause, params: Params | None = None) -> Row | None:
        rows = self.rows(statement, params)
        return rows[0] if rows else None

    def scalar(self, statement: sa.TextClause, params: Params | None = None) -> Any:
        """The first column of the first row (the statement must return one)."""
        row = self.first(statement, params)
        assert row is not None, statement.text
        return row[0]

    def changed(self, statement: sa.TextClause, params: Params | None = None) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        if self._sa is not None:
            return int(self._sa.execute(statement, _args(params)).rowcount)
        assert self._raw is not None
        cursor = self._raw.execute(statement.text, _args(params))
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def notify(self, payload: str) -> None:
        """PostgreSQL: queue a NOTIFY, delivered on commit (`queue/notify.py`); nothing on SQLite."""
        if self._sa is not None:
            self._sa.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


def _args(params: Params | None) -> dict[str, object]:
    # The hot statements pass dicts already; a copy per statement shows in their cost.
    return params if isinstance(params, dict) else dict(params or {})


class _DriverRow:
    """A driver row with a SQLAlchemy row's two accessors."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, index: int) -> Any:
        return self._values[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    @property
    def _mapping(self) -> dict[str, Any]:
        return {name: self._values[i] for name, i in self._names.items()}


def engine_url(database_url: str) -> str:
    # Plain postgresql:// would pick psycopg2, which we do not install.
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class Database:
    """One database (SQLite file or PostgreSQL), migrated to the current schema when opened."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.is_sqlite = database_url.startswith("sqlite:")
        if self.is_sqlite:
            path = database_url.removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # The engine serves migrations only (Alembic needs one); queries use the driver connections below.
            self.engine: Engine = sa.create_engine(
                database_url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=2, max_overflow=4
            )
            sa_event.listen(self.engine, "connect", sqlite.on_connect)
            sa_event.listen(self.engine, "begin", sqlite.on_begin)
            self._sqlite: sqlite.SqliteFile | None = sqlite.SqliteFile(path)
        else:
            self.engine = sa.create_engine(engine_url(database_url), pool_size=8, max_overflow=16, pool_pre_ping=True)
            self._sqlite = None
        #: True when reads are cheap enough to run on an event loop instead of a worker thread (SQLite in WAL mode:
        #: a read takes tens of microseconds and never waits for a writer).
        self.reads_inline = self.is_sqlite
        self.migrate()

    @contextmanager
    def read(self) -> Iterator[Conn]:
        """A read snapshot: every query in the block sees the same committed state."""
        if self._sqlite is not None:
            with self._sqlite.reader() as raw:
                yield Conn(raw)
            return
        with self.engine.connect() as conn:
            yield Conn(conn)
            conn.rollback()

    @contextmanager
    def write(self) -> Iterator[Conn]:
        """A write transaction; commits when the block ends, rolls back if it raises."""
        if self._sqlite is not None:
            with self._sqlite.writer() as raw:
                assert raw is not None
                yield Conn(raw)
            return
        with self.engine.begin() as conn:
            yield Conn(conn)

    @contextmanager
    def write_now(self) -> Iterator[Conn | None]:
        """`write()` if it can begin without waiting for another writer, else None: for callers on an event loop.

        Only SQLite can tell: when no other writer holds its lock, a transaction takes a fraction of a millisecond.
        PostgreSQL always yields None (its writes wait on the network).
        """
        if self._sqlite is None:
            yield None
            return
        with self._sqlite.writer(wait=False) as raw:
            yield None if raw is None else Conn(raw)

    def migrate(self) -> None:
        """Create or upgrade the schema (Alembic); safe when several processes start at once."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.is_sqlite:
            lock_path = self.url.removeprefix("sqlite:///") + ".migrate.lock"
            with open(lock_path, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        else:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(727274)"))
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(727274)"))
                    conn.commit()

    def ping(self) -> bool:
        with self.read() as conn:
            return bool(conn.scalar(sa.text("SELECT 1")) == 1)

    def checkpoint(self) -> None:
        """SQLite: fold the write-ahead log into the database file (writers on an event loop never do)."""
        if self._sqlite is not None:
            self._sqlite.checkpoint()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        self.engine.dispose()
