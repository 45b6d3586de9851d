"""Submitting jobs: the queue's limits, fair turns between keys, `Idempotency-Key`, in one transaction per batch.

`Submissions` is part of `JobStore` (`store.py`); it shares the store's database and clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa

from reimagine.jobs import JobStatus
from reimagine.queue import transitions
from reimagine.queue.db import Conn, Database
from reimagine.queue.models import EventKind, IdempotencyConflict, Job, JobState, NewJob, QueueFull
from reimagine.queue.reads import job_with_position, position

_COUNT_QUEUED = sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED'")
_INSERT_JOB = sa.text(
    "INSERT INTO jobs (id, key_id, endpoint, status, priority, is_sync, webhook_url, base_url,"
    " start_deadline_at, created_at, attempts, fence, cancel_requested, turn, no_retry, store_io, file_ttl_s,"
    " input_bytes)"
    " VALUES (:id, :key_id, :endpoint, 'QUEUED', :priority, :is_sync, :webhook_url, :base_url,"
    " :deadline, :now, 0, 0, :false, :turn, :no_retry, :store_io, :file_ttl_s, :input_bytes) RETURNING *"
)
_INSERT_INPUT = sa.text("INSERT INTO job_inputs (job_id, input) VALUES (:id, :input)")
#: At one priority: the turn at the head of the queue (from `ix_jobs_queue`) and a key's last queued turn (from
#: `ix_jobs_key`). Turns order jobs of equal priority only; each priority has its own round.
_HEAD_TURN = sa.text(
    "SELECT turn FROM jobs WHERE status = 'QUEUED' AND priority = :priority ORDER BY turn, seq LIMIT 1"
)
_KEY_LAST_TURN = sa.text(
    "SELECT MAX(turn) FROM jobs WHERE key_id = :key_id AND status = 'QUEUED' AND priority = :priority"
)
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


class Submissions:
    """`JobStore.enqueue` and its batch forms."""

    db: Database
    clock: Callable[[], float]

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
            head = conn.first(_HEAD_TURN, {"priority": new.priority})
            last = conn.scalar(_KEY_LAST_TURN, {"key_id": new.key_id, "priority": new.priority})
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
