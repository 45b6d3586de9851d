"""The job store: a job's life from submission to retention, with its events and its files.

Each public method is one transaction on `Database` (`queue/db.py`); every status change inside one goes through
`queue/transitions.py`. The webhook outbox (`store.outbox`) and API keys (`store.keys`) share the database and are
their own modules. Time comes from `clock` (seconds since the epoch), so tests can move it instead of sleeping.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from reimagine.jobs import TERMINAL, JobStatus
from reimagine.queue import transitions
from reimagine.queue.admin import Admin
from reimagine.queue.db import Conn, Database
from reimagine.queue.keys import ApiKeys
from reimagine.queue.models import (
    CancelOutcome,
    DeleteOutcome,
    EventKind,
    FileRow,
    IdempotencyConflict,
    Job,
    JobState,
    LeaseState,
    NewJob,
    Outcome,
    QueueFull,
)
from reimagine.queue.outbox import Outbox
from reimagine.queue.reads import JobReads, job_with_position, position
from reimagine.queue.usage import Usage

logger = logging.getLogger(__name__)

_ANY_QUEUED = sa.text("SELECT 1 FROM jobs WHERE status = 'QUEUED' LIMIT 1")
_COUNT_QUEUED = sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED'")
_INSERT_JOB = sa.text(
    "INSERT INTO jobs (id, key_id, endpoint, status, priority, is_sync, webhook_url, base_url,"
    " start_deadline_at, created_at, attempts, fence, cancel_requested, turn, no_retry, store_io, file_ttl_s,"
    " input_bytes)"
    " VALUES (:id, :key_id, :endpoint, 'QUEUED', :priority, :is_sync, :webhook_url, :base_url,"
    " :deadline, :now, 0, 0, :false, :turn, :no_retry, :store_io, :file_ttl_s, :input_bytes) RETURNING *"
)
#: The turn at the head of the queue (from `ix_jobs_queue`) and a key's last queued turn (from `ix_jobs_key`).
_INSERT_INPUT = sa.text("INSERT INTO job_inputs (job_id, input) VALUES (:id, :input)")
_HEAD_TURN = sa.text("SELECT turn FROM jobs WHERE status = 'QUEUED' ORDER BY priority DESC, turn, seq LIMIT 1")
_KEY_LAST_TURN = sa.text("SELECT MAX(turn) FROM jobs WHERE key_id = :key_id AND status = 'QUEUED'")
_KEY_QUEUED = sa.text("SELECT COUNT(*) FROM jobs WHERE key_id = :key_id AND status = 'QUEUED'")
#: How long an `Idempotency-Key` names its request.
IDEMPOTENCY_S = 24 * 3600.0
_IDEMPOTENCY = sa.text(
    "SELECT body_hash, job_id, created_at FROM idempotency_keys WHERE key_id = :key_id AND idem_key = :idem_key"
)
_CLAIM_IDEMPOTENCY = sa.text(
    "INSERT INTO idempotency_keys (key_id, idem_key, body_hash, job_id, created_at)"
    " VALUES (:key_id, :idem_key, :body_hash, :job_id, :now) ON CONFLICT (key_id, idem_key) DO NOTHING"
)
_FORGET_IDEMPOTENCY = sa.text("DELETE FROM idempotency_keys WHERE key_id = :key_id AND idem_key = :idem_key")
_STALE_IDEMPOTENCY = sa.text("DELETE FROM idempotency_keys WHERE created_at < :before")
_RUNNING_WEBHOOK = sa.text(
    "SELECT webhook_url, file_ttl_s FROM jobs WHERE id = :id AND fence = :fence AND status = 'RUNNING'"
)
_JOB_FILE_TTL = sa.text("SELECT file_ttl_s FROM jobs WHERE id = :id")
_HEARTBEAT = sa.text(
    "UPDATE jobs SET lease_expires_at = :exp WHERE id = :id AND fence = :fence AND status = 'RUNNING'"
    " RETURNING cancel_requested"
)
_CANCEL_LOOKUP = sa.text("SELECT status, key_id, webhook_url FROM jobs WHERE id = :id")
_ASK_CANCEL = sa.text("UPDATE jobs SET cancel_requested = :true WHERE id = :id AND status = 'RUNNING'")
_LOST_LEASES = (
    "SELECT id, fence, attempts, cancel_requested, webhook_url, no_retry FROM jobs"
    " WHERE status = 'RUNNING' AND ({where})"
)
_EXPIRED = sa.text(
    "SELECT id FROM jobs WHERE completed_at IS NOT NULL AND completed_at < :t ORDER BY completed_at LIMIT :n"
)
_FILE_EXISTS = sa.text("SELECT 1 FROM files WHERE key = :key")
_DELETE_FILE = sa.text("DELETE FROM files WHERE key = :key")
_INSERT_FILE = sa.text(
    "INSERT INTO files (key, job_id, kind, content_type, size, created_at, expires_at, key_id)"
    " VALUES (:key, :job_id, :kind, :ct, :size, :now, :expires_at, :key_id)"
)
_FILE_EXPIRY = sa.text("SELECT expires_at FROM files WHERE key = :key")
_EXPIRED_FILES = sa.text(
    "SELECT key FROM files WHERE expires_at IS NOT NULL AND expires_at <= :now ORDER BY expires_at LIMIT :n"
)
_DELETE_OWNED = sa.text("SELECT status, key_id FROM jobs WHERE id = :id")


class JobStore(JobReads):
    """Jobs, events and files in one SQL database (SQLite or PostgreSQL), plus its outbox and API keys."""

    def __init__(self, db: Database, *, max_attempts: int = 3, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock
        self.outbox = Outbox(db, clock)
        self.keys = ApiKeys(db, clock)
        self.usage = Usage(db, clock)
        self.admin = Admin(self)
        #: see `Database.reads_inline`
        self.reads_inline = db.reads_inline

    @property
    def database_url(self) -> str:
        return self.db.url

    def ping(self) -> bool:
        return self.db.ping()

    def checkpoint(self) -> None:
        self.db.checkpoint()

    def close(self) -> None:
        self.db.close()

    # -- submit --------------------------------------------------------------------------------------------------

    def enqueue(self, new: NewJob, *, max_queued: int | None = None) -> tuple[JobState, int]:
        """Insert a queued job; returns it and its queue position (jobs ahead of it).

        Raises `QueueFull` when `max_queued` jobs already wait (checked in the same transaction, so concurrent
        submits cannot overshoot it on SQLite; on PostgreSQL by at most the number of concurrent submits).
        """
        result = self.enqueue_many([new], max_queued=max_queued)[0]
        if isinstance(result, (QueueFull, IdempotencyConflict)):
            raise result
        return result

    def enqueue_many(
        self, news: list[NewJob], *, max_queued: int | None = None
    ) -> list[tuple[JobState, int] | QueueFull | IdempotencyConflict]:
        """`enqueue` for several jobs in one transaction (one commit, one turn at the write lock).

        Each job gets its own answer, in order: itself and its position, or `QueueFull` once the queue is full.
        """
        with self.db.write() as conn:
            return self._enqueue_many(conn, news, max_queued)

    def try_enqueue_many(
        self, news: list[NewJob], *, max_queued: int | None = None
    ) -> list[tuple[JobState, int] | QueueFull | IdempotencyConflict] | None:
        """`enqueue_many` if it can be done without waiting (`Database.write_now`), else None."""
        with self.db.write_now() as conn:
            return None if conn is None else self._enqueue_many(conn, news, max_queued)

    def _enqueue_many(
        self, conn: Conn, news: list[NewJob], max_queued: int | None
    ) -> list[tuple[JobState, int] | QueueFull | IdempotencyConflict]:
        now = self.clock()
        results: list[tuple[JobState, int] | QueueFull | IdempotencyConflict] = []
        queued = int(conn.scalar(_COUNT_QUEUED)) if max_queued is not None else 0
        for new in news:
            if new.idempotency_key is not None:
                earlier = self._idempotent(conn, new, now)
                if earlier is not None:
                    results.append(earlier)
                    continue
            if max_queued is not None and queued >= max_queued:
                results.append(QueueFull(queued))
                self._forget_idempotency(conn, new)
                continue
            if new.max_queue_length is not None:
                waiting = int(conn.scalar(_KEY_QUEUED, {"key_id": new.key_id}))
                if waiting >= new.max_queue_length:
                    results.append(QueueFull(waiting, per_key=True))
                    self._forget_idempotency(conn, new)
                    continue
            # Start-time fair queueing: one turn after the key's own last queued job, and never before the head of
            # the queue, so a key's 10,000-job batch takes every other turn once another key queues.
            head = conn.first(_HEAD_TURN)
            last = conn.scalar(_KEY_LAST_TURN, {"key_id": new.key_id})
            turn = max(int(head[0]) if head is not None else 0, int(last or 0)) + 1
            params = {
                "id": new.id,
                "key_id": new.key_id,
                "endpoint": new.endpoint,
                "priority": new.priority,
                "is_sync": new.is_sync,
                "webhook_url": new.webhook_url,
                "base_url": new.base_url,
                "deadline": new.start_deadline_at,
                "now": now,
                "false": False,
                "turn": turn,
                "no_retry": new.no_retry,
                "store_io": new.store_io,
                "file_ttl_s": new.file_ttl_s,
                "input_bytes": new.input_bytes,
            }
            job = Job.from_row(conn.rows(_INSERT_JOB, params)[0], input=new.input)
            conn.changed(_INSERT_INPUT, {"id": new.id, "input": json.dumps(new.input)})
            transitions.add_event(conn, job.id, EventKind.STATUS, {"status": JobStatus.QUEUED.value}, now)
            results.append((job, position(conn, job)))
            queued += 1
        return results

    def _idempotent(self, conn: Conn, new: NewJob, now: float) -> tuple[JobState, int] | IdempotencyConflict | None:
        """The earlier job `new`'s `Idempotency-Key` names, a conflict, or None after claiming the key for `new`.

        The key is claimed before the job is inserted (`ON CONFLICT DO NOTHING`): two replicas submitting the same
        key at once cannot both make a job; the second sees the first's row once it commits.
        """
        ids = {"key_id": new.key_id, "idem_key": new.idempotency_key}
        for _ in range(2):
            row = conn.first(_IDEMPOTENCY, ids)
            if row is not None and row[2] >= now - IDEMPOTENCY_S:
                if row[0] != new.body_hash:
                    return IdempotencyConflict(
                        "this Idempotency-Key was used in the last 24 hours for a request with another body"
                    )
                found = job_with_position(conn, row[1])
                if found is not None:
                    return found
            if row is not None:
                # Expired, or its request was deleted: the key is free.
                conn.changed(_FORGET_IDEMPOTENCY, ids)
            claimed = conn.changed(
                _CLAIM_IDEMPOTENCY, {**ids, "body_hash": new.body_hash, "job_id": new.id, "now": now}
            )
            if claimed == 1:
                return None
        raise RuntimeError(f"Idempotency-Key {new.idempotency_key!r} kept changing hands")

    def _forget_idempotency(self, conn: Conn, new: NewJob) -> None:
        """A refused submission leaves its `Idempotency-Key` free (a retry must not replay the refusal's id)."""
        if new.idempotency_key is not None:
            conn.changed(_FORGET_IDEMPOTENCY, {"key_id": new.key_id, "idem_key": new.idempotency_key})

    # -- the worker's side: claim, lease, complete -------------------------------------------------------------

    def claim(self, owner: str, lease_s: float) -> Job | None:
        """Take the next queued job (priority, then age) under a lease; expired start deadlines fail first."""
        if self.db.is_sqlite:
            # An idle worker asks after every job: with nothing queued (nothing to claim, no deadline to expire),
            # answer from a read rather than take SQLite's single write lock away from the API's submissions.
            with self.db.read() as conn:
                if conn.first(_ANY_QUEUED) is None:
                    return None
        with self.db.write() as conn:
            return transitions.claim_next(conn, owner, lease_s, self.clock())

    def expire_start_deadlines(self) -> None:
        """Fail queued jobs whose start deadline passed (504 with `X-Fal-Request-Timeout-Type: user`)."""
        with self.db.write() as conn:
            transitions.expire_start_deadlines(conn, self.clock())

    def heartbeat(self, job_id: str, fence: int, lease_s: float) -> LeaseState:
        """Renew a lease; tells the worker whether it still holds it and whether cancel was asked."""
        with self.db.write() as conn:
            row = conn.first(_HEARTBEAT, {"exp": self.clock() + lease_s, "id": job_id, "fence": fence})
        if row is None:
            return LeaseState.LOST
        return LeaseState.CANCEL if row[0] else LeaseState.HELD

    def complete(self, job_id: str, fence: int, outcome: Outcome, *, files: list[FileRow] | None = None) -> bool:
        """Finish a running job; False if the lease was taken over (fencing), in which case nothing changes.

        `files` are the job's output files, recorded in the same transaction as the outcome.
        """
        with self.db.write() as conn:
            return self._complete(conn, job_id, fence, outcome, files, self.clock())

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
        now = self.clock()
        with self.db.write() as conn:
            finished = self._complete(conn, job_id, fence, outcome, files, now)
            return finished, transitions.claim_next(conn, owner, lease_s, now)

    def _complete(
        self, conn: Conn, job_id: str, fence: int, outcome: Outcome, files: list[FileRow] | None, now: float
    ) -> bool:
        row = conn.first(_RUNNING_WEBHOOK, {"id": job_id, "fence": fence})
        if row is None:
            return False
        finished = transitions.finish(conn, job_id, row[0], outcome, now, old=JobStatus.RUNNING, fence=fence)
        for file in files or ():
            _add_file(conn, file, job_id, now, ttl_s=row[1])
        return finished

    def requeue(self, job_id: str, fence: int) -> bool:
        """Give a claimed job back (a worker draining before it started the job)."""
        with self.db.write() as conn:
            return transitions.requeue(conn, job_id, fence, self.clock(), undo_attempt=True)

    def request_cancel(self, job_id: str, key_id: str | None) -> CancelOutcome:
        """Cancel a job: a queued one at once, a running one at its next denoising step."""
        now = self.clock()
        with self.db.write() as conn:
            row = conn.first(_CANCEL_LOOKUP, {"id": job_id})
            if row is None or (key_id is not None and row[1] != key_id):
                return CancelOutcome.NOT_FOUND
            status = JobStatus(row[0])
            if status == JobStatus.QUEUED:
                transitions.finish(conn, job_id, row[2], Outcome.cancelled(), now, old=JobStatus.QUEUED)
                return CancelOutcome.CANCELED
            if status == JobStatus.RUNNING:
                conn.changed(_ASK_CANCEL, {"true": True, "id": job_id})
                transitions.add_log(conn, job_id, "Cancellation requested", "WARN", now)
                return CancelOutcome.CANCELLATION_REQUESTED
            return CancelOutcome.ALREADY_COMPLETED

    def reclaim(self, *, expired_before: float | None = None, owners: list[str] | None = None) -> list[str]:
        """Take back running jobs whose lease expired or whose worker is known dead.

        Each is re-queued for another attempt, cancelled if its owner asked, or failed as `poisoned` once it has
        taken down `max_attempts` workers, so a job that kills its worker cannot crash-loop the service.
        """
        if expired_before is None and not owners:
            return []
        now = self.clock()
        clauses: list[str] = []
        params: dict[str, object] = {}
        if expired_before is not None:
            clauses.append("lease_expires_at < :before")
            params["before"] = expired_before
        if owners:
            clauses.append(f"lease_owner IN ({', '.join(f':o{i}' for i in range(len(owners)))})")
            params.update({f"o{i}": owner for i, owner in enumerate(owners)})
        touched: list[str] = []
        with self.db.write() as conn:
            for job_id, fence, attempts, cancel_requested, webhook_url, no_retry in conn.rows(
                sa.text(_LOST_LEASES.format(where=" OR ".join(clauses))), params
            ):
                fence, attempts = int(fence), int(attempts)
                if cancel_requested:
                    outcome = Outcome.cancelled()
                    transitions.finish(conn, job_id, webhook_url, outcome, now, old=JobStatus.RUNNING, fence=fence)
                elif no_retry:
                    outcome = Outcome.runner_disconnected()
                    transitions.finish(conn, job_id, webhook_url, outcome, now, old=JobStatus.RUNNING, fence=fence)
                elif attempts >= self.max_attempts:
                    outcome = Outcome.poisoned(attempts)
                    transitions.finish(conn, job_id, webhook_url, outcome, now, old=JobStatus.RUNNING, fence=fence)
                elif transitions.requeue(conn, job_id, fence, now, undo_attempt=False):
                    transitions.add_log(conn, job_id, f"Worker lost during attempt {attempts}; re-queued", "WARN", now)
                touched.append(job_id)
        if touched:
            logger.warning("reclaimed %d running job(s): %s", len(touched), ", ".join(touched))
        return touched

    # -- retention ---------------------------------------------------------------------------------------------

    def delete_expired(self, completed_before: float, *, batch: int = 200) -> list[str]:
        """Drop finished jobs (and their events) older than the retention; returns their file keys.

        In transactions of `batch` jobs: a sweep after a long downtime may find a hundred thousand, and one
        transaction for all would hold the write lock (every submit, claim and completion) for many seconds.
        """
        keys: list[str] = []
        while True:
            with self.db.write() as conn:
                ids = [row[0] for row in conn.rows(_EXPIRED, {"t": completed_before, "n": batch})]
                if not ids:
                    return keys
                chosen = {f"i{n}": job_id for n, job_id in enumerate(ids)}
                among = ", ".join(f":{name}" for name in chosen)
                keys += [
                    row[0] for row in conn.rows(sa.text(f"SELECT key FROM files WHERE job_id IN ({among})"), chosen)
                ]
                for table, column in _JOB_TABLES:
                    conn.changed(sa.text(f"DELETE FROM {table} WHERE {column} IN ({among})"), chosen)
            if len(ids) < batch:
                with self.db.write() as conn:
                    conn.changed(_STALE_IDEMPOTENCY, {"before": self.clock() - IDEMPOTENCY_S})
                return keys
            # The writers that queued for the lock meanwhile go first (the lock is not fair: without a pause this
            # loop would take it straight back).
            time.sleep(0.005)

    # -- events and files ------------------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: EventKind, data: dict[str, Any]) -> int:
        with self.db.write() as conn:
            return transitions.add_event(conn, job_id, kind, data, self.clock())

    def add_log(self, job_id: str, message: str, level: str = "INFO") -> int:
        with self.db.write() as conn:
            return transitions.add_log(conn, job_id, message, level, self.clock())

    def add_file(self, key: str, *, job_id: str | None, kind: str, content_type: str, size: int) -> None:
        """Record a file of a job (a preview, a map); it expires with the job's lifecycle, if it has one."""
        with self.db.write() as conn:
            ttl_s = conn.first(_JOB_FILE_TTL, {"id": job_id}) if job_id is not None else None
            now = self.clock()
            _add_file(conn, FileRow(key, kind, content_type, size), job_id, now, ttl_s=ttl_s[0] if ttl_s else None)

    def add_upload(self, key: str, *, key_id: str, content_type: str, ttl_s: float) -> None:
        """Record an upload that expires `ttl_s` from now (`X-Fal-Object-Lifecycle`); uploads without one are
        not recorded (they follow the retention)."""
        with self.db.write() as conn:
            _add_file(conn, FileRow(key, "upload", content_type, 0), None, self.clock(), ttl_s=ttl_s, key_id=key_id)

    def file_expiry(self, key: str) -> float | None:
        """When the file stops being served; None if it has no expiry of its own (or is unknown)."""
        with self.db.read() as conn:
            row = conn.first(_FILE_EXPIRY, {"key": key})
        return None if row is None or row[0] is None else float(row[0])

    def expire_files(self, *, batch: int = 500) -> list[str]:
        """Forget files whose lifecycle ended; returns their keys, for the caller to delete from storage."""
        with self.db.write() as conn:
            keys = [row[0] for row in conn.rows(_EXPIRED_FILES, {"now": self.clock(), "n": batch})]
            if keys:
                chosen = {f"f{n}": key for n, key in enumerate(keys)}
                among = ", ".join(f":{name}" for name in chosen)
                conn.changed(sa.text(f"DELETE FROM files WHERE key IN ({among})"), chosen)
        return keys

    # -- a key's own requests ------------------------------------------------------------------------------------

    def delete_job(self, job_id: str, key_id: str) -> tuple[DeleteOutcome, list[str]]:
        """Remove a finished job of `key_id`: its row (input, result), events, files and `Idempotency-Key`.

        Returns the file keys, for the caller to delete from storage. Another key's job is NOT_FOUND.
        """
        with self.db.write() as conn:
            row = conn.first(_DELETE_OWNED, {"id": job_id})
            if row is None or row[1] != key_id:
                return DeleteOutcome.NOT_FOUND, []
            if JobStatus(row[0]) not in TERMINAL:
                return DeleteOutcome.NOT_FINISHED, []
            keys = [r[0] for r in conn.rows(sa.text("SELECT key FROM files WHERE job_id = :i0"), {"i0": job_id})]
            for table, column in _JOB_TABLES:
                conn.changed(sa.text(f"DELETE FROM {table} WHERE {column} IN (:i0)"), {"i0": job_id})
        return DeleteOutcome.DELETED, keys

    def remove_file(self, key: str) -> None:
        """Forget a file the caller deleted from storage (a job's superseded preview)."""
        with self.db.write() as conn:
            conn.changed(_DELETE_FILE, {"key": key})


#: What a job leaves in the store, deleted with it (the job's row last).
_JOB_TABLES = (
    ("events", "job_id"),
    ("files", "job_id"),
    ("idempotency_keys", "job_id"),
    ("webhook_outbox", "job_id"),
    ("job_inputs", "job_id"),
    ("jobs", "id"),
)


def _add_file(
    conn: Conn,
    file: FileRow,
    job_id: str | None,
    now: float,
    *,
    ttl_s: float | None = None,
    key_id: str | None = None,
) -> None:
    if conn.first(_FILE_EXISTS, {"key": file.key}) is None:
        params = {"key": file.key, "job_id": job_id, "kind": file.kind, "ct": file.content_type, "size": file.size}
        expires_at = now + ttl_s if ttl_s is not None else None
        conn.changed(_INSERT_FILE, {**params, "now": now, "expires_at": expires_at, "key_id": key_id})
