"""The job store on SQL: SQLite (WAL, embedded default) and PostgreSQL share this code and schema.

Dialect differences are confined to connection set-up and the claim query. Every state change goes through
`reimagine.jobs.can_transition` semantics encoded in the WHERE clauses (`status = ...`), and every terminal
transition writes its event and its webhook outbox row in the same transaction, so a crash can never leave a
finished job without its notification, nor send a notification for a job that did not finish.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from reimagine.jobs import ErrorType, JobStatus
from reimagine.queue import sqlite
from reimagine.queue.models import (
    ApiKey,
    CancelOutcome,
    Event,
    FileRow,
    Job,
    LeaseState,
    NewJob,
    Outcome,
    QueueFull,
    WebhookDelivery,
    cancelled_outcome,
    failed_outcome,
    webhook_body,
)
from reimagine.queue.notify import QUEUED, notify_sql

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# Hot-path statements, built once: a `text()` per call costs its construction and cache-key work every time.
_SELECT_JOB = sa.text("SELECT * FROM jobs WHERE id = :id")
_ANY_QUEUED = sa.text("SELECT 1 FROM jobs WHERE status = 'QUEUED' LIMIT 1")
_COUNT_QUEUED = sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED'")
_POSITION = sa.text(
    "SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED' AND (priority > :p OR (priority = :p AND seq < :s))"
)
_INSERT_JOB = sa.text(
    "INSERT INTO jobs (id, key_id, endpoint, status, priority, input, is_sync, webhook_url, base_url,"
    " start_deadline_at, created_at, attempts, fence, cancel_requested)"
    " VALUES (:id, :key_id, :endpoint, 'QUEUED', :priority, :input, :is_sync, :webhook_url, :base_url,"
    " :deadline, :now, 0, 0, :false) RETURNING *"
)
_EXPIRED_STARTS = sa.text("SELECT id, webhook_url FROM jobs WHERE status = 'QUEUED' AND start_deadline_at < :now")
_CLAIM_PICK = "SELECT seq FROM jobs WHERE status = 'QUEUED' ORDER BY priority DESC, seq LIMIT 1"
_CLAIM = (
    "UPDATE jobs SET status = 'RUNNING', lease_owner = :owner, lease_expires_at = :exp,"
    " fence = fence + 1, attempts = attempts + 1, started_at = :now"
    " WHERE seq = ({pick}) AND status = 'QUEUED' RETURNING *"
)
_CLAIM_SQLITE = sa.text(_CLAIM.format(pick=_CLAIM_PICK))
_CLAIM_PG = sa.text(_CLAIM.format(pick=_CLAIM_PICK + " FOR UPDATE SKIP LOCKED"))
_RUNNING_WEBHOOK = sa.text("SELECT webhook_url FROM jobs WHERE id = :id AND fence = :fence AND status = 'RUNNING'")
_FINISH = (
    "UPDATE jobs SET status = :status, result_status = :rs, result_body = :rb, error = :error,"
    " error_type = :error_type, completed_at = :now, lease_owner = NULL, lease_expires_at = NULL,"
    " inference_time_s = :it WHERE id = :id AND {where}"
)
#: `_finish` statements by their WHERE clause (a handful of fixed strings).
_FINISH_BY_WHERE: dict[str, sa.TextClause] = {}
_INSERT_OUTBOX = sa.text(
    "INSERT INTO webhook_outbox (job_id, url, body, attempts, next_attempt_at, created_at)"
    " VALUES (:job_id, :url, :body, 0, :now, :now)"
)
_INSERT_EVENT = sa.text(
    "INSERT INTO events (job_id, kind, data, created_at) VALUES (:job_id, :kind, :data, :now) RETURNING id"
)
_JOB_EVENTS = sa.text("SELECT * FROM events WHERE job_id = :id AND id > :after ORDER BY id")
_EVENTS_SINCE = sa.text("SELECT * FROM events WHERE id > :after ORDER BY id LIMIT :limit")
_LEASE_STATE = sa.text("SELECT status, fence, cancel_requested FROM jobs WHERE id = :id")
_HEARTBEAT = sa.text(
    "UPDATE jobs SET lease_expires_at = :exp WHERE id = :id AND fence = :fence AND status = 'RUNNING'"
    " RETURNING cancel_requested"
)
_FILE_EXISTS = sa.text("SELECT 1 FROM files WHERE key = :key")
_INSERT_FILE = sa.text(
    "INSERT INTO files (key, job_id, kind, content_type, size, created_at)"
    " VALUES (:key, :job_id, :kind, :ct, :size, :now)"
)
_DUE_WHERE = (
    "delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= :now"
    " AND (locked_until IS NULL OR locked_until < :now)"
)
_ANY_DUE_WEBHOOK = sa.text(f"SELECT 1 FROM webhook_outbox WHERE {_DUE_WHERE} LIMIT 1")
_KEY_HASH = sa.text("SELECT secret_hash FROM api_keys WHERE id = :id AND revoked_at IS NULL")


def _finish_statement(where: str) -> sa.TextClause:
    statement = _FINISH_BY_WHERE.get(where)
    if statement is None:
        statement = _FINISH_BY_WHERE[where] = sa.text(_FINISH.format(where=where))
    return statement


def _engine_url(database_url: str) -> str:
    # Plain postgresql:// would pick psycopg2, which we do not install.
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class SqlStore:
    """Jobs, events, webhook outbox, files and API keys in one SQL database."""

    def __init__(self, database_url: str, *, max_attempts: int = 3) -> None:
        self.database_url = database_url
        self.max_attempts = max_attempts
        self.is_sqlite = database_url.startswith("sqlite:")
        if self.is_sqlite:
            path = database_url.removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                database_url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=16
            )
            sa_event.listen(self.engine, "connect", sqlite.on_connect)
            sa_event.listen(self.engine, "begin", sqlite.on_begin)
            self._sqlite: sqlite.SqliteFile | None = sqlite.SqliteFile(path)
        else:
            self.engine = sa.create_engine(_engine_url(database_url), pool_size=8, max_overflow=16, pool_pre_ping=True)
            self._sqlite = None
        #: True when the hot reads are cheap enough to run on an event loop instead of a worker thread (SQLite in
        #: WAL mode: a read takes tens of microseconds and never waits for a writer).
        self.reads_inline = self.is_sqlite
        self.migrate()

    # -- lifecycle ---------------------------------------------------------------------------------------------

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
            lock_path = self.database_url.removeprefix("sqlite:///") + ".migrate.lock"
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
        with self._read() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar() == 1

    def checkpoint(self) -> None:
        """SQLite: fold the write-ahead log into the database file (writers on an event loop never do)."""
        if self._sqlite is not None:
            self._sqlite.checkpoint()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._sqlite.writer_turn() if self._sqlite is not None else nullcontext(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _fast_write(self) -> Iterator[Connection | sqlite3.Connection]:
        """A write transaction for hot writes (`_x` and `_changed` statements only): on SQLite, a driver connection."""
        if self._sqlite is None:
            with self._write() as conn:
                yield conn
            return
        with self._sqlite.writer() as raw:
            assert raw is not None
            yield raw

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(reimagine_read=True) as conn:
            yield conn
            conn.rollback()

    @contextmanager
    def _fast_read(self) -> Iterator[Connection | sqlite3.Connection]:
        """A read snapshot for the hot single-row reads (`_x` statements only); a driver connection on SQLite."""
        if self._sqlite is None:
            with self._read() as conn:
                yield conn
            return
        with self._sqlite.reader() as raw:
            yield raw

    def _x(
        self, conn: Connection | sqlite3.Connection, statement: sa.TextClause, params: dict[str, Any] | None = None
    ) -> list[Any]:
        """Run a hot-path statement in `conn`'s transaction; all its rows (`row[i]` and `row._mapping`).

        On SQLite the statement goes straight to the driver (it takes the same `:name` parameters), skipping
        SQLAlchemy's per-statement work, which costs more than SQLite's own for these single-row statements.
        """
        if isinstance(conn, sqlite3.Connection):
            cursor = conn.execute(statement.text, params or {})
        elif not self.is_sqlite:
            return list(conn.execute(statement, params).all())
        else:
            cursor = conn.connection.driver_connection.execute(statement.text, params or {})  # type: ignore[union-attr]
        try:
            rows = cursor.fetchall()
            if cursor.description is None:
                return []
            names = {d[0]: i for i, d in enumerate(cursor.description)}
            return [_RawRow(names, row) for row in rows]
        finally:
            cursor.close()

    def _changed(self, conn: Connection | sqlite3.Connection, statement: sa.TextClause, params: dict[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        if isinstance(conn, sqlite3.Connection):
            cursor = conn.execute(statement.text, params)
        elif not self.is_sqlite:
            return int(conn.execute(statement, params).rowcount)
        else:
            cursor = conn.connection.driver_connection.execute(statement.text, params)  # type: ignore[union-attr]
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    # -- jobs ----------------------------------------------------------------------------------------------------

    def enqueue(self, new: NewJob, *, max_queued: int | None = None) -> tuple[Job, int]:
        """Insert a queued job; returns it and its queue position (jobs ahead of it).

        Raises `QueueFull` when `max_queued` jobs already wait (checked in the same transaction, so concurrent
        submits cannot overshoot it on SQLite; on PostgreSQL by at most the number of concurrent submits).
        """
        result = self.enqueue_many([new], max_queued=max_queued)[0]
        if isinstance(result, QueueFull):
            raise result
        return result

    def enqueue_many(self, news: list[NewJob], *, max_queued: int | None = None) -> list[tuple[Job, int] | QueueFull]:
        """`enqueue` for several jobs in one transaction (one commit, one turn at the write lock).

        Each job gets its own answer, in order: itself and its position, or `QueueFull` once the queue is full.
        """
        with self._fast_write() as conn:
            return self._enqueue_many(conn, news, max_queued)

    def try_enqueue_many(
        self, news: list[NewJob], *, max_queued: int | None = None
    ) -> list[tuple[Job, int] | QueueFull] | None:
        """`enqueue_many` if it can be done without waiting, else None: for callers on an event loop.

        Only SQLite can: when no other writer holds its lock, the transaction takes a fraction of a millisecond.
        """
        if self._sqlite is None:
            return None
        with self._sqlite.writer(wait=False) as raw:
            return None if raw is None else self._enqueue_many(raw, news, max_queued)

    def _enqueue_many(
        self, conn: Connection | sqlite3.Connection, news: list[NewJob], max_queued: int | None
    ) -> list[tuple[Job, int] | QueueFull]:
        now = time.time()
        results: list[tuple[Job, int] | QueueFull] = []
        queued = int(self._x(conn, _COUNT_QUEUED)[0][0]) if max_queued is not None else 0
        for new in news:
            if max_queued is not None and queued >= max_queued:
                results.append(QueueFull(queued))
                continue
            row = self._x(
                conn,
                _INSERT_JOB,
                {
                    "id": new.id,
                    "key_id": new.key_id,
                    "endpoint": new.endpoint,
                    "priority": new.priority,
                    "input": json.dumps(new.input),
                    "is_sync": new.is_sync,
                    "webhook_url": new.webhook_url,
                    "base_url": new.base_url,
                    "deadline": new.start_deadline_at,
                    "now": now,
                    "false": False,
                },
            )[0]
            job = Job.from_row(row)
            self._add_event(conn, job.id, "status", {"status": JobStatus.QUEUED.value}, now)
            results.append((job, self._position(conn, job)))
            queued += 1
        return results

    def get(self, job_id: str) -> Job | None:
        with self._fast_read() as conn:
            row = _first(self._x(conn, _SELECT_JOB, {"id": job_id}))
        return Job.from_row(row) if row is not None else None

    def get_with_position(self, job_id: str) -> tuple[Job, int] | None:
        with self._fast_read() as conn:
            return self._job_with_position(conn, job_id)

    def status_snapshot(self, job_id: str, after_id: int = 0) -> tuple[Job, int, list[Event]] | None:
        """The job, its queue position and its events after `after_id`, read in one snapshot."""
        with self._fast_read() as conn:
            found = self._job_with_position(conn, job_id)
            if found is None:
                return None
            rows = self._x(conn, _JOB_EVENTS, {"id": job_id, "after": after_id})
        return found[0], found[1], [_event(row) for row in rows]

    def _job_with_position(self, conn: Connection | sqlite3.Connection, job_id: str) -> tuple[Job, int] | None:
        row = _first(self._x(conn, _SELECT_JOB, {"id": job_id}))
        if row is None:
            return None
        job = Job.from_row(row)
        return job, (self._position(conn, job) if job.status == JobStatus.QUEUED else 0)

    def _position(self, conn: Connection | sqlite3.Connection, job: Job) -> int:
        return int(self._x(conn, _POSITION, {"p": job.priority, "s": job.seq})[0][0])

    def count_queued(self) -> int:
        with self._fast_read() as conn:
            return int(self._x(conn, _COUNT_QUEUED)[0][0])

    def count_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(sa.text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all()
        return {str(status): int(n) for status, n in rows}

    def claim(self, owner: str, lease_s: float) -> Job | None:
        """Take the next queued job (priority, then age) under a lease; expired start deadlines fail first."""
        if self.is_sqlite:
            # An idle worker asks after every job: with nothing queued (nothing to claim, no deadline to expire),
            # answer from a read rather than take SQLite's single write lock away from the API's submissions.
            with self._fast_read() as conn:
                if not self._x(conn, _ANY_QUEUED):
                    return None
        with self._fast_write() as conn:
            return self._claim(conn, owner, lease_s, time.time())

    def _claim(self, conn: Connection | sqlite3.Connection, owner: str, lease_s: float, now: float) -> Job | None:
        self._expire_start_deadlines(conn, now)
        row = _first(
            self._x(
                conn, _CLAIM_SQLITE if self.is_sqlite else _CLAIM_PG, {"owner": owner, "exp": now + lease_s, "now": now}
            )
        )
        if row is None:
            return None
        job = Job.from_row(row)
        self._add_event(conn, job.id, "status", {"status": JobStatus.RUNNING.value, "attempt": job.attempts}, now)
        return job

    def expire_start_deadlines(self) -> None:
        """Fail queued jobs whose start deadline passed (504 with `X-Fal-Request-Timeout-Type: user`)."""
        with self._write() as conn:
            self._expire_start_deadlines(conn, time.time())

    def _expire_start_deadlines(self, conn: Connection | sqlite3.Connection, now: float) -> None:
        rows = self._x(conn, _EXPIRED_STARTS, {"now": now})
        for job_id, webhook_url in rows:
            outcome = failed_outcome(504, "Request timed out before it started", ErrorType.REQUEST_TIMEOUT)
            self._finish(conn, job_id, webhook_url, outcome, now, where="status = 'QUEUED'")

    def heartbeat(self, job_id: str, fence: int, lease_s: float) -> LeaseState:
        """Renew a lease; tells the worker whether it still holds it and whether cancel was asked."""
        with self._fast_write() as conn:
            row = _first(self._x(conn, _HEARTBEAT, {"exp": time.time() + lease_s, "id": job_id, "fence": fence}))
        if row is None:
            return LeaseState.LOST
        return LeaseState.CANCEL if row[0] else LeaseState.HELD

    def lease_state(self, job_id: str, fence: int) -> LeaseState:
        """Cheap read used at every denoising step: still ours, and not cancelled?"""
        with self._fast_read() as conn:
            row = _first(self._x(conn, _LEASE_STATE, {"id": job_id}))
        if row is None or row[0] != JobStatus.RUNNING.value or int(row[1]) != fence:
            return LeaseState.LOST
        return LeaseState.CANCEL if row[2] else LeaseState.HELD

    def complete(self, job_id: str, fence: int, outcome: Outcome, *, files: list[FileRow] | None = None) -> bool:
        """Finish a running job; False if the lease was taken over (fencing), in which case nothing changes.

        `files` are the job's output files, recorded in the same transaction as the outcome.
        """
        with self._fast_write() as conn:
            return self._complete(conn, job_id, fence, outcome, files, time.time())

    def complete_and_claim(
        self,
        job_id: str,
        fence: int,
        outcome: Outcome,
        *,
        files: list[FileRow] | None = None,
        owner: str,
        lease_s: float,
    ) -> tuple[bool, Job | None]:
        """`complete`, then `claim` for `owner` in the same transaction: a busy worker's one write per job."""
        now = time.time()
        with self._fast_write() as conn:
            return self._complete(conn, job_id, fence, outcome, files, now), self._claim(conn, owner, lease_s, now)

    def _complete(
        self,
        conn: Connection | sqlite3.Connection,
        job_id: str,
        fence: int,
        outcome: Outcome,
        files: list[FileRow] | None,
        now: float,
    ) -> bool:
        row = _first(self._x(conn, _RUNNING_WEBHOOK, {"id": job_id, "fence": fence}))
        if row is None:
            return False
        finished = self._finish(
            conn, job_id, row[0], outcome, now, where="status = 'RUNNING' AND fence = :fence", fence=fence
        )
        for file in files or ():
            self._add_file(conn, file, job_id, now)
        return finished

    def _finish(
        self,
        conn: Connection | sqlite3.Connection,
        job_id: str,
        webhook_url: str | None,
        outcome: Outcome,
        now: float,
        *,
        where: str,
        fence: int | None = None,
    ) -> bool:
        changed = self._changed(
            conn,
            _finish_statement(where),
            {
                "status": outcome.status.value,
                "rs": outcome.result_status,
                "rb": json.dumps(outcome.result_body),
                "error": outcome.error,
                "error_type": outcome.error_type,
                "now": now,
                "it": outcome.inference_time_s,
                "id": job_id,
                "fence": fence,
            },
        )
        if changed != 1:
            return False
        self._add_event(
            conn,
            job_id,
            "status",
            {"status": outcome.status.value, "error": outcome.error, "error_type": outcome.error_type},
            now,
        )
        if webhook_url:
            self._changed(
                conn,
                _INSERT_OUTBOX,
                {"job_id": job_id, "url": webhook_url, "body": webhook_body(job_id, outcome), "now": now},
            )
        return True

    def requeue(self, job_id: str, fence: int) -> bool:
        """Give a claimed job back (a worker draining before it started the job)."""
        with self._write() as conn:
            result = conn.execute(
                sa.text(
                    "UPDATE jobs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL,"
                    " attempts = attempts - 1 WHERE id = :id AND fence = :fence AND status = 'RUNNING'"
                ),
                {"id": job_id, "fence": fence},
            )
            if result.rowcount == 1:
                self._add_event(conn, job_id, "status", {"status": JobStatus.QUEUED.value}, time.time())
            return result.rowcount == 1

    def request_cancel(self, job_id: str, key_id: str | None) -> CancelOutcome:
        """Cancel a job: a queued one at once, a running one at its next denoising step."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                sa.text("SELECT status, key_id, webhook_url FROM jobs WHERE id = :id"), {"id": job_id}
            ).one_or_none()
            if row is None or (key_id is not None and row[1] != key_id):
                return CancelOutcome.NOT_FOUND
            status = JobStatus(row[0])
            if status == JobStatus.QUEUED:
                self._finish(conn, job_id, row[2], cancelled_outcome(), now, where="status = 'QUEUED'")
                return CancelOutcome.CANCELED
            if status == JobStatus.RUNNING:
                conn.execute(
                    sa.text("UPDATE jobs SET cancel_requested = :true WHERE id = :id AND status = 'RUNNING'"),
                    {"true": True, "id": job_id},
                )
                self._add_event(conn, job_id, "log", _log_data("Cancellation requested", "WARN", now), now)
                return CancelOutcome.CANCELLATION_REQUESTED
            return CancelOutcome.ALREADY_COMPLETED

    def reclaim(self, *, expired_before: float | None = None, owners: list[str] | None = None) -> list[str]:
        """Take back running jobs whose lease expired or whose worker is known dead.

        Each is re-queued for another attempt, cancelled if its owner asked, or failed as `poisoned` once it has
        taken down `max_attempts` workers, so a job that kills its worker cannot crash-loop the service.
        """
        if expired_before is None and not owners:
            return []
        now = time.time()
        clauses: list[str] = []
        params: dict[str, object] = {}
        if expired_before is not None:
            clauses.append("lease_expires_at < :before")
            params["before"] = expired_before
        if owners:
            names = [f":o{i}" for i in range(len(owners))]
            clauses.append(f"lease_owner IN ({', '.join(names)})")
            params.update({f"o{i}": owner for i, owner in enumerate(owners)})
        touched: list[str] = []
        with self._write() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, fence, attempts, cancel_requested, webhook_url FROM jobs"
                    f" WHERE status = 'RUNNING' AND ({' OR '.join(clauses)})"
                ),
                params,
            ).all()
            for job_id, fence, attempts, cancel_requested, webhook_url in rows:
                where, fence_args = "status = 'RUNNING' AND fence = :fence", {"fence": int(fence)}
                if cancel_requested:
                    self._finish(conn, job_id, webhook_url, cancelled_outcome(), now, where=where, **fence_args)
                elif int(attempts) >= self.max_attempts:
                    message = f"Request failed: its worker died {attempts} times while running it"
                    outcome = failed_outcome(500, message, ErrorType.POISONED)
                    self._finish(conn, job_id, webhook_url, outcome, now, where=where, **fence_args)
                else:
                    conn.execute(
                        sa.text(
                            "UPDATE jobs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL"
                            f" WHERE id = :id AND {where}"
                        ),
                        {"id": job_id, **fence_args},
                    )
                    self._add_event(conn, job_id, "status", {"status": JobStatus.QUEUED.value}, now)
                    message = f"Worker lost during attempt {attempts}; re-queued"
                    self._add_event(conn, job_id, "log", _log_data(message, "WARN", now), now)
                touched.append(job_id)
        if touched:
            logger.warning("reclaimed %d running job(s): %s", len(touched), ", ".join(touched))
        return touched

    def running_owners(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(sa.text("SELECT DISTINCT lease_owner FROM jobs WHERE status = 'RUNNING'")).all()
        return [row[0] for row in rows if row[0]]

    def delete_expired(self, completed_before: float, *, batch: int = 200) -> list[str]:
        """Drop finished jobs (and their events) older than the retention; returns their file keys.

        In transactions of `batch` jobs: a sweep after a long downtime may find a hundred thousand, and one
        transaction for all would hold the write lock (every submit, claim and completion) for many seconds.
        """
        keys: list[str] = []
        while True:
            with self._write() as conn:
                ids = [
                    row[0]
                    for row in conn.execute(
                        sa.text(
                            "SELECT id FROM jobs WHERE completed_at IS NOT NULL AND completed_at < :t"
                            " ORDER BY completed_at LIMIT :n"
                        ),
                        {"t": completed_before, "n": batch},
                    ).all()
                ]
                if not ids:
                    return keys
                chosen = {f"i{n}": job_id for n, job_id in enumerate(ids)}
                among = ", ".join(f":{name}" for name in chosen)
                files = conn.execute(sa.text(f"SELECT key FROM files WHERE job_id IN ({among})"), chosen)
                keys += [row[0] for row in files]
                for table, column in (("events", "job_id"), ("files", "job_id"), ("jobs", "id")):
                    conn.execute(sa.text(f"DELETE FROM {table} WHERE {column} IN ({among})"), chosen)
            if len(ids) < batch:
                return keys
            # The writers that queued for the lock meanwhile go first (the lock is not fair: without a pause this
            # loop would take it straight back).
            time.sleep(0.005)

    # -- events ------------------------------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> int:
        with self._fast_write() as conn:
            return self._add_event(conn, job_id, kind, data, time.time())

    def add_log(self, job_id: str, message: str, level: str = "INFO") -> int:
        now = time.time()
        with self._fast_write() as conn:
            return self._add_event(conn, job_id, "log", _log_data(message, level, now), now)

    def _add_event(
        self, conn: Connection | sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any], now: float
    ) -> int:
        row = self._x(conn, _INSERT_EVENT, {"job_id": job_id, "kind": kind, "data": json.dumps(data), "now": now})[0]
        if not self.is_sqlite:
            # Every write path (enqueue, progress, cancel, finish, re-queue) adds an event, so this one hook wakes
            # API replicas and idle workers on other machines; delivered on commit (reimagine.queue.notify).
            notify_sql(conn, job_id)
            if kind == "status" and data.get("status") == JobStatus.QUEUED.value:
                notify_sql(conn, QUEUED)
        return int(row[0])

    def events(self, job_id: str, after_id: int = 0) -> list[Event]:
        with self._fast_read() as conn:
            rows = self._x(conn, _JOB_EVENTS, {"id": job_id, "after": after_id})
        return [_event(row) for row in rows]

    def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        """Events of every job after `after_id`: the API's fan-out tails this."""
        with self._fast_read() as conn:
            rows = self._x(conn, _EVENTS_SINCE, {"after": after_id, "limit": limit})
        return [_event(row) for row in rows]

    def last_event_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM events")).scalar_one())

    # -- files ---------------------------------------------------------------------------------------------------

    def add_file(self, key: str, *, job_id: str | None, kind: str, content_type: str, size: int) -> None:
        with self._fast_write() as conn:
            self._add_file(conn, FileRow(key, kind, content_type, size), job_id, time.time())

    def _add_file(self, conn: Connection | sqlite3.Connection, file: FileRow, job_id: str | None, now: float) -> None:
        exists = _first(self._x(conn, _FILE_EXISTS, {"key": file.key}))
        if exists is None:
            self._changed(
                conn,
                _INSERT_FILE,
                {
                    "key": file.key,
                    "job_id": job_id,
                    "kind": file.kind,
                    "ct": file.content_type,
                    "size": file.size,
                    "now": now,
                },
            )

    # -- webhook outbox --------------------------------------------------------------------------------------

    def due_webhooks(self, now: float, limit: int = 20, lock_s: float = 60.0) -> list[WebhookDelivery]:
        """Lock and return deliveries whose next attempt is due (one API replica delivers each)."""
        # Checked with a read first: this runs after every finished job, and most have no webhook, so the usual
        # answer costs no write transaction (which would wait for, and hold up, the workers' writes).
        with self._fast_read() as conn:
            if not self._x(conn, _ANY_DUE_WEBHOOK, {"now": now}):
                return []
        with self._write() as conn:
            pick = f"SELECT id FROM webhook_outbox WHERE {_DUE_WHERE} ORDER BY next_attempt_at LIMIT :limit"
            if not self.is_sqlite:
                pick += " FOR UPDATE SKIP LOCKED"
            rows = conn.execute(
                sa.text(
                    f"UPDATE webhook_outbox SET locked_until = :until WHERE id IN ({pick})"
                    " RETURNING id, job_id, url, body, attempts"
                ),
                {"now": now, "limit": limit, "until": now + lock_s},
            ).all()
        return [WebhookDelivery(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]

    def record_webhook_attempt(
        self, delivery_id: int, *, status: int | None, error: str | None, next_attempt_at: float | None
    ) -> None:
        """Record one delivery attempt: delivered (2xx), retry later, or give up (`next_attempt_at` None)."""
        now = time.time()
        delivered = status is not None and 200 <= status < 300
        with self._write() as conn:
            conn.execute(
                sa.text(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, last_status = :status, last_error = :error,"
                    " locked_until = NULL, delivered_at = :delivered, gave_up_at = :gave_up,"
                    " next_attempt_at = COALESCE(:next, next_attempt_at) WHERE id = :id"
                ),
                {
                    "status": status,
                    "error": error,
                    "delivered": now if delivered else None,
                    "gave_up": now if (not delivered and next_attempt_at is None) else None,
                    "next": next_attempt_at,
                    "id": delivery_id,
                },
            )

    def webhook_deliveries(self, job_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                sa.text("SELECT * FROM webhook_outbox WHERE job_id = :id ORDER BY id"), {"id": job_id}
            ).all()
        return [dict(row._mapping) for row in rows]

    # -- API keys ------------------------------------------------------------------------------------------------

    def create_key(self, name: str) -> str:
        """Create a key; returns `<id>:<secret>`, the only time the secret exists in clear."""
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self._write() as conn:
            conn.execute(
                sa.text("INSERT INTO api_keys (id, name, secret_hash, created_at) VALUES (:id, :name, :hash, :now)"),
                {"id": key_id, "name": name, "hash": _hash_secret(secret), "now": time.time()},
            )
        return f"{key_id}:{secret}"

    def verify_key(self, key: str) -> str | None:
        """The key's id if `key` is a live `<id>:<secret>`, else None."""
        key_id, _, secret = key.partition(":")
        if not key_id or not secret:
            return None
        with self._fast_read() as conn:
            row = _first(self._x(conn, _KEY_HASH, {"id": key_id}))
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            return None
        return key_id

    def list_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(sa.text("SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at"))
            return [ApiKey(r[0], r[1], r[2], r[3]) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._write() as conn:
            result = conn.execute(
                sa.text("UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL"),
                {"now": time.time(), "id": key_id},
            )
        return result.rowcount == 1

    def count_keys(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM api_keys")).scalar_one())


class _RawRow:
    """A driver row with the two accessors the store uses on SQLAlchemy rows: `row[i]` and `row._mapping[name]`."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, index: int) -> Any:
        return self._values[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def _mapping(self) -> dict[str, Any]:
        return {name: self._values[i] for name, i in self._names.items()}


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


def _hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough; a slow KDF would only slow every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def _log_data(message: str, level: str, now: float) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"message": message, "level": level, "timestamp": datetime.fromtimestamp(now, UTC).isoformat()}


def _event(row: Any) -> Event:
    m = row._mapping
    return Event(
        id=int(m["id"]), job_id=m["job_id"], kind=m["kind"], data=json.loads(m["data"]), created_at=m["created_at"]
    )
