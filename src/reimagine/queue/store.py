"""The job store: a job's life from its claim to its retention, with its events.

`JobStore` is the one object callers hold. Its parts live in modules of their own: submitting (`submit.py`), reads
(`reads.py`), files (`files.py`); the webhook outbox (`store.outbox`), API keys (`store.keys`) and usage
(`store.usage`) are objects on it. Each public method is one transaction on `Database` (`db.py`); every status
change inside one goes through `transitions.py`. Time comes from `clock` (seconds since the epoch), so tests can
move it instead of sleeping. A new query goes into the module of its concept, as a method of its class there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from reimagine.jobs import TERMINAL, JobStatus
from reimagine.queue import transitions
from reimagine.queue.admin import Admin
from reimagine.queue.db import Conn, Database
from reimagine.queue.files import Files, record_file
from reimagine.queue.keys import ApiKeys
from reimagine.queue.models import (
    CancelOutcome,
    DeleteOutcome,
    EventKind,
    FileRow,
    Job,
    LeaseState,
    Outcome,
)
from reimagine.queue.outbox import Outbox
from reimagine.queue.reads import JobReads
from reimagine.queue.submit import IDEMPOTENCY_S, Submissions
from reimagine.queue.usage import Usage

logger = logging.getLogger(__name__)

_ANY_QUEUED = sa.text("SELECT 1 FROM jobs WHERE status = 'QUEUED' LIMIT 1")
_STALE_IDEMPOTENCY = sa.text("DELETE FROM idempotency_keys WHERE created_at < :before")
_RUNNING_WEBHOOK = sa.text(
    "SELECT webhook_url, file_ttl_s FROM jobs WHERE id = :id AND fence = :fence AND status = 'RUNNING'"
)
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
_DELETE_FILE = sa.text("DELETE FROM files WHERE key = :key")
_DELETE_OWNED = sa.text("SELECT status, key_id FROM jobs WHERE id = :id")


class JobStore(Submissions, Files, JobReads):
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
            record_file(conn, file, job_id, now, ttl_s=row[1])
        return finished

    def requeue(self, job_id: str, fence: int) -> bool:
        """Give a claimed job back (a worker draining before it started the job)."""
        with self.db.write() as conn:
            return transitions.requeue(conn, job_id, fence, self.clock(), undo_attempt=True)

    def give_back(self, owners: list[str]) -> list[str]:
        """Requeue the running jobs of `owners`, stopped by a graceful shutdown, without counting their attempt.

        Unlike `reclaim` (a worker that died), the job did nothing wrong: restarts must never poison it.
        """
        if not owners:
            return []
        now = self.clock()
        where = f"lease_owner IN ({', '.join(f':o{i}' for i in range(len(owners)))})"
        params = {f"o{i}": owner for i, owner in enumerate(owners)}
        given: list[str] = []
        with self.db.write() as conn:
            for job_id, fence, *_rest in conn.rows(sa.text(_LOST_LEASES.format(where=where)), params):
                if transitions.requeue(conn, job_id, int(fence), now, undo_attempt=True):
                    transitions.add_log(
                        conn, job_id, "Given back to the queue: the server is shutting down", "WARN", now
                    )
                    given.append(job_id)
        return given

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
