"""How the store talks to a SQLite file: WAL connections, readers without SQLAlchemy, writers that queue in the kernel.

SQLite has one write lock per database. A writer that finds it taken sleeps 1, 2, 5, 10... ms between retries (its
busy handler); with the API and the workers writing hundreds of times a second, that made half of all submits wait
a millisecond or more (p99 36 ms) for a lock held for a tenth of that. So every writer of the file on this machine
first takes an exclusive `flock` on a file next to it and is woken the moment the previous writer lets go; threads
of one process queue on a mutex first, because a `flock` belongs to the open file, not to the thread. The lock goes
with its holder's death, and SQLite's own locking still guards against writers that do not take it.

Every statement of the store (status polls, job events, each submit, claim, progress step and completion) uses plain
driver connections, one per thread for reading and one for writing: SQLAlchemy's pool checkout and begin/commit
events cost two to three times these single-row statements themselves.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

#: Pages of write-ahead log after which a committing writer folds the log back into the database itself (SQLite's
#: default is 1000, about forty no-op jobs).
_AUTOCHECKPOINT_PAGES = 10_000


class SqliteFile:
    """The per-file state behind `Database`'s SQLite reads and writes (queue/db.py)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer_mutex = threading.Lock()
        # Held open for the store's lifetime: the flock lives on this open file.
        self._writer_file = open(path + ".write.lock", "a+")

    @contextmanager
    def writer_turn(self, *, wait: bool = True) -> Iterator[bool]:
        """This process's and thread's turn at the write lock (see the module docstring).

        Yields True once it is ours; with `wait=False`, False at once when another writer has it.
        """
        if not self._writer_mutex.acquire(blocking=wait):
            yield False
            return
        try:
            try:
                fcntl.flock(self._writer_file, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(self._writer_file, fcntl.LOCK_UN)
        finally:
            self._writer_mutex.release()

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """This thread's driver connection, inside a read snapshot."""
        raw = self._connection("reader")
        raw.execute("BEGIN")
        try:
            yield raw
        finally:
            raw.execute("ROLLBACK")

    @contextmanager
    def writer(self, *, wait: bool = True) -> Iterator[sqlite3.Connection | None]:
        """This thread's driver connection, inside a write transaction that commits unless the block raises.

        With `wait=False` it yields None at once instead of waiting when another writer holds the lock. Such a
        writer may be an event loop, so its connection never checkpoints the log (a checkpoint syncs the disk);
        `checkpoint()` does, from a thread.
        """
        with self.writer_turn(wait=wait) as turn:
            if not turn:
                yield None
                return
            try:
                raw = self._connection("writer" if wait else "writer_nowait")
                raw.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                if wait:
                    raise
                # A writer that does not queue on our lock (another program) holds SQLite's own.
                yield None
                return
            try:
                yield raw
                raw.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (a full disk): the connection must not stay inside a transaction.
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

    def _connection(self, role: str) -> sqlite3.Connection:
        raw: sqlite3.Connection | None = getattr(self._local, role, None)
        if raw is None:
            raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # A reader waits only while a crashed writer's log is recovered; these reads may run on an event loop,
            # so that wait is bounded well below the writers' 30 s.
            _configure(raw, busy_timeout_ms={"reader": 5000, "writer": 30000, "writer_nowait": 0}[role])
            if role == "writer_nowait":
                raw.execute("PRAGMA wal_autocheckpoint=0")
            setattr(self._local, role, raw)
            with self._conns_lock:
                self._conns.append(raw)
        return raw

    def checkpoint(self) -> None:
        """Copy the log's committed pages into the database file, without waiting for readers or writers."""
        self._connection("writer").execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for raw in conns:
            raw.close()
        self._writer_file.close()


def _configure(raw: sqlite3.Connection, *, busy_timeout_ms: int = 30000) -> None:
    # First, so that switching the journal mode (the first open of a new file) waits for a lock like anything else.
    raw.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    raw.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives kill -9 of any process (only an OS crash or power loss can drop the last commits).
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("PRAGMA foreign_keys=ON")
    # A safety net: `serve` checkpoints from a thread of its own well before this (api/app.py, `_checkpoint`).
    raw.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    """SQLAlchemy "connect" hook of the store's engine."""
    # Driver-level autocommit so that the "begin" hook below decides how each transaction starts.
    dbapi_connection.isolation_level = None
    _configure(dbapi_connection)


def on_begin(conn: Connection) -> None:
    """SQLAlchemy "begin" hook: writers take the lock up front, reads begin deferred."""
    # A deferred transaction that upgrades to a writer fails at once with SQLITE_BUSY under contention instead of
    # waiting on busy_timeout.
    if conn.get_execution_options().get("reimagine_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
