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

from reimagine.jobs import JobStatus
from reimagine.queue import transitions
from reimagine.queue.db import Conn, Database
from reimagine.queue.keys import ApiKeys
from reimagine.queue.models import (
    CancelOutcome,
    EventKind,
    FileRow,
    Job,
    LeaseState,
    NewJob,
    Outcome,
    QueueFull,
)
from reimagine.queue.outbox import Outbox
from reimagine.queue.reads import JobReads, position

logger = logging.getLogger(__name__)

_ANY_QUEUED = sa.text("SELECT 1 FROM jobs WHERE status = 'QUEUED' LIMIT 1")
_COUNT_QUEUED = sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED'")
_INSERT_JOB = sa.text(
    "INSERT INTO jobs (id, key_id, endpoint, status, priority, input, is_sync, webhook_url, base_url,"
    " start_deadline_at, created_at, attempts, fence, cancel_requested)"
    " VALUES (:id, :key_id, :endpoint, 'QUEUED', :priority, :input, :is_sync, :webhook_url, :base_url,"
    " :deadline, :now, 0, 0, :false) RETURNING *"
)
_RUNNING_WEBHOOK = sa.text("SELECT webhook_url FROM jobs WHERE id = :id AND fence = :fence AND status = 'RUNNING'")
_HEARTBEAT = sa.text(
    "UPDATE jobs SET lease_expires_at = :exp WHERE id = :id AND fence = :fence AND status = 'RUNNING'"
    " RETURNING cancel_requested"
)
_CANCEL_LOOKUP = sa.text("SELECT status, key_id, webhook_url FROM jobs WHERE id = :id")
_ASK_CANCEL = sa.text("UPDATE jobs SET cancel_requested = :true WHERE id = :id AND status = 'RUNNING'")
_LOST_LEASES = (
    "SELECT id, fence, attempts, cancel_requested, webhook_url FROM jobs WHERE status = 'RUNNING' AND ({where})"
)
_EXPIRED = sa.text(
    "SELECT id FROM jobs WHERE completed_at IS NOT NULL AND completed_at < :t ORDER BY completed_at LIMIT :n"
)
_FILE_EXISTS = sa.text("SELECT 1 FROM files WHERE key = :key")
_INSERT_FILE = sa.text(
    "INSERT INTO files (key, job_id, kind, content_type, size, created_at)"
    " VALUES (:key, :job_id, :kind, :ct, :size, :now)"
)


class JobStore(JobReads):
    """Jobs, events and files in one SQL database (SQLite or PostgreSQL), plus its outbox and API keys."""

    def __init__(self, db: Database, *, max_attempts: int = 3, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.clock = clock
        self.outbox = Outbox(db, clock)
        self.keys = ApiKeys(db, clock)
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
        with self.db.write() as conn:
            return self._enqueue_many(conn, news, max_queued)

    def try_enqueue_many(
        self, news: list[NewJob], *, max_queued: int | None = None
    ) -> list[tuple[Job, int] | QueueFull] | None:
        """`enqueue_many` if it can be done without waiting (`Database.write_now`), else None."""
        with self.db.write_now() as conn:
            return None if conn is None else self._enqueue_many(conn, news, max_queued)

    def _enqueue_many(
        self, conn: Conn, news: list[NewJob], max_queued: int | None
    ) -> list[tuple[Job, int] | QueueFull]:
        now = self.clock()
        results: list[tuple[Job, int] | QueueFull] = []
        queued = int(conn.scalar(_COUNT_QUEUED)) if max_queued is not None else 0
        for new in news:
            if max_queued is not None and queued >= max_queued:
                results.append(QueueFull(queued))
                continue
            params = {
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
            }
            job = Job.from_row(conn.rows(_INSERT_JOB, params)[0])
            transitions.add_event(conn, job.id, EventKind.STATUS, {"status": JobStatus.QUEUED.value}, now)
            results.append((job, position(conn, job)))
            queued += 1
        return results

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
            _add_file(conn, file, job_id, now)
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
            for job_id, fence, attempts, cancel_requested, webhook_url in conn.rows(
                sa.text(_LOST_LEASES.format(where=" OR ".join(clauses))), params
            ):
                fence, attempts = int(fence), int(attempts)
                if cancel_requested:
                    outcome = Outcome.cancelled()
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
                for table, column in (("events", "job_id"), ("files", "job_id"), ("jobs", "id")):
                    conn.changed(sa.text(f"DELETE FROM {table} WHERE {column} IN ({among})"), chosen)
            if len(ids) < batch:
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
        with self.db.write() as conn:
            _add_file(conn, FileRow(key, kind, content_type, size), job_id, self.clock())


def _add_file(conn: Conn, file: FileRow, job_id: str | None, now: float) -> None:
    if conn.first(_FILE_EXISTS, {"key": file.key}) is None:
        params = {"key": file.key, "job_id": job_id, "kind": file.kind, "ct": file.content_type, "size": file.size}
        conn.changed(_INSERT_FILE, {**params, "now": now})
