"""How the store talks to a SQLite file: WAL connections, readers without SQLAlchemy, writers that queue in the kernel.

SQLite has one write lock per database. A writer that finds it taken sleeps 1, 2, 5, 10... ms between retries (its
busy handler); with the API and the workers writing hundreds of times a second, that made half of all submits wait
a millisecond or more (p99 36 ms) for a lock held for a tenth of that. So every writer of the file on this machine
first takes an exclusive `flock` on a file next to it and is woken the moment the previous writer lets go; threads
of one process queue on a mutex first, because a `flock` belongs to the open file, not to the thread. The lock goes
with its holder's death, and SQLite's own locking still guards against writers that do not take it.

The hot single-row reads (every status poll, every job event) use one plain driver connection per thread:
SQLAlchemy's pool checkout and begin/rollback events cost three times the read itself.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection


class SqliteFile:
    """The per-file state behind `SqlStore`'s SQLite reads and writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._writer_mutex = threading.Lock()
        # Held open for the store's lifetime: the flock lives on this open file.
        self._writer_file = open(path + ".write.lock", "a+")

    @contextmanager
    def writer_turn(self) -> Iterator[None]:
        """This process's and thread's turn at the write lock (see the module docstring)."""
        with self._writer_mutex:
            fcntl.flock(self._writer_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._writer_file, fcntl.LOCK_UN)

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """This thread's driver connection, inside a read snapshot."""
        raw: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if raw is None:
            raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # A WAL reader waits only while a crashed writer's log is recovered; these reads may run on an event
            # loop, so that wait is bounded well below the writers' 30 s.
            raw.execute("PRAGMA busy_timeout=5000")
            self._readers.conn = raw
            with self._reader_lock:
                self._reader_conns.append(raw)
        raw.execute("BEGIN")
        try:
            yield raw
        finally:
            raw.execute("ROLLBACK")

    def close(self) -> None:
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for raw in conns:
            raw.close()
        self._writer_file.close()


def on_connect(dbapi_connection: Any, _record: Any) -> None:
    """SQLAlchemy "connect" hook of the store's engine."""
    # Driver-level autocommit so that the "begin" hook below decides how each transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives kill -9 of any process (only an OS crash or power loss can drop the last commits).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def on_begin(conn: Connection) -> None:
    """SQLAlchemy "begin" hook: writers take the lock up front, reads begin deferred."""
    # A deferred transaction that upgrades to a writer fails at once with SQLITE_BUSY under contention instead of
    # waiting on busy_timeout.
    if conn.get_execution_options().get("reimagine_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
