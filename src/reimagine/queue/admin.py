"""The operator's view of the store (`store.admin`), over every key: list, requeue, purge, queue stats, pause.

What `reimagine requests ...` and `reimagine queue ...` run. Status changes go through the store's own methods
(`request_cancel`, `enqueue`, `delete_expired`), so through `queue/transitions.py` and `jobs.can_transition`: a
finished job stays finished. `requeue` therefore submits the failed job's input again as a new request, and says
so in both jobs' logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa

from reimagine.jobs import JobStatus
from reimagine.queue.db import Database
from reimagine.queue.models import Job, JobState, NewJob
from reimagine.queue.notify import QUEUED

_LIST = "SELECT j.*, i.input FROM jobs j LEFT JOIN job_inputs i ON i.job_id = j.id WHERE 1 = 1{where}"
_LIST_ORDER = " ORDER BY j.seq DESC LIMIT :limit"
_QUEUED_BY_PRIORITY = sa.text(
    "SELECT priority, COUNT(*), MIN(created_at) FROM jobs WHERE status = 'QUEUED' GROUP BY priority"
)
_OLDEST_QUEUED = sa.text("SELECT id, created_at FROM jobs WHERE status = 'QUEUED' ORDER BY created_at, seq LIMIT 1")
_RUNNING = sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'RUNNING'")
_PER_KEY = sa.text(
    "SELECT j.key_id, k.name, j.status, COUNT(*) FROM jobs j LEFT JOIN api_keys k ON k.id = j.key_id"
    " WHERE j.status IN ('QUEUED', 'RUNNING') GROUP BY j.key_id, k.name, j.status"
)
_PAUSED = sa.text("SELECT updated_at FROM queue_state WHERE name = 'paused'")
_PAUSE = sa.text(
    "INSERT INTO queue_state (name, value, updated_at) VALUES ('paused', '1', :now) ON CONFLICT (name) DO NOTHING"
)
_RESUME = sa.text("DELETE FROM queue_state WHERE name = 'paused'")


@dataclass(frozen=True)
class KeyLoad:
    key_id: str
    name: str | None
    queued: int = 0
    running: int = 0


@dataclass(frozen=True)
class QueueStats:
    #: priority -> jobs waiting at it (higher runs first)
    queued_by_priority: dict[int, int]
    running: int
    #: the request waiting longest, and since when (epoch seconds); None with an empty queue
    oldest_queued_id: str | None
    oldest_queued_at: float | None
    paused_at: float | None
    per_key: list[KeyLoad] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return sum(self.queued_by_priority.values())


class _Store(Protocol):
    """The slice of `JobStore` the operator's tools use (a Protocol: `store.py` builds `Admin`, so no import back)."""

    db: Database
    clock: Callable[[], float]

    def get(self, job_id: str) -> Job | None: ...

    def enqueue(self, new: NewJob, *, max_queued: int | None = ...) -> tuple[JobState, int]: ...

    def add_log(self, job_id: str, message: str, level: str = ...) -> int: ...

    def delete_expired(self, completed_before: float, *, batch: int = ...) -> list[str]: ...


class Admin:
    def __init__(self, store: _Store) -> None:
        self._store = store
        self._db = store.db

    def list_jobs(
        self, *, status: JobStatus | None = None, key_id: str | None = None, since: float | None = None, limit: int = 50
    ) -> list[Job]:
        """Jobs of every key, newest first; filtered by status, key and creation time."""
        where = ""
        params: dict[str, object] = {"limit": limit}
        if status is not None:
            where += " AND j.status = :status"
            params["status"] = status.value
        if key_id is not None:
            where += " AND j.key_id = :key_id"
            params["key_id"] = key_id
        if since is not None:
            where += " AND j.created_at >= :since"
            params["since"] = since
        with self._db.read() as conn:
            return [Job.from_row(row) for row in conn.rows(sa.text(_LIST.format(where=where) + _LIST_ORDER), params)]

    def requeue(self, job_id: str) -> Job:
        """Submit a FAILED job's input again, as a new request of the same key; returns the new job.

        Raises KeyError for an unknown id, ValueError for a job that did not fail or whose input is gone.
        """
        old = self._store.get(job_id)
        if old is None:
            raise KeyError(job_id)
        if old.status != JobStatus.FAILED:
            raise ValueError(f"only a FAILED request can be requeued; {job_id} is {old.status.value}")
        if not old.store_io:
            raise ValueError(f"{job_id} was sent with X-Fal-Store-IO: 0: its input was erased when it ended")
        new = NewJob(
            id=str(uuid.uuid4()),
            key_id=old.key_id,
            endpoint=old.endpoint,
            input=old.input,
            priority=old.priority,
            webhook_url=old.webhook_url,
            base_url=old.base_url,
            no_retry=old.no_retry,
            store_io=old.store_io,
            file_ttl_s=old.file_ttl_s,
            input_bytes=old.input_bytes,
        )
        queued, _position = self._store.enqueue(new)
        self._store.add_log(queued.id, f"Requeued by an operator from request {old.id}", "WARN")
        self._store.add_log(old.id, f"Requeued by an operator as request {queued.id}", "WARN")
        job = self._store.get(queued.id)
        assert job is not None
        return job

    def purge(self, completed_before: float) -> list[str]:
        """Delete finished jobs completed before `completed_before`; returns their file keys (delete them too)."""
        return self._store.delete_expired(completed_before)

    def stats(self) -> QueueStats:
        with self._db.read() as conn:
            by_priority = {int(p): int(n) for p, n, _oldest in conn.rows(_QUEUED_BY_PRIORITY)}
            oldest = conn.first(_OLDEST_QUEUED)
            running = int(conn.scalar(_RUNNING))
            paused = conn.first(_PAUSED)
            loads: dict[str, KeyLoad] = {}
            for key_id, name, status, count in conn.rows(_PER_KEY):
                load = loads.get(key_id, KeyLoad(key_id, name))
                if status == JobStatus.QUEUED.value:
                    load = KeyLoad(key_id, name, queued=int(count), running=load.running)
                else:
                    load = KeyLoad(key_id, name, queued=load.queued, running=int(count))
                loads[key_id] = load
        return QueueStats(
            queued_by_priority=dict(sorted(by_priority.items(), reverse=True)),
            running=running,
            oldest_queued_id=oldest[0] if oldest else None,
            oldest_queued_at=float(oldest[1]) if oldest else None,
            paused_at=float(paused[0]) if paused else None,
            per_key=sorted(loads.values(), key=lambda load: (-load.queued - load.running, load.key_id)),
        )

    def pause(self) -> bool:
        """Workers finish what they hold and claim nothing new; submits still queue. False if already paused."""
        with self._db.write() as conn:
            return conn.changed(_PAUSE, {"now": self._store.clock()}) == 1

    def resume(self) -> bool:
        """Claims start again; idle workers are woken at once. False if the queue was not paused."""
        with self._db.write() as conn:
            resumed = conn.changed(_RESUME, {}) == 1
            if resumed:
                conn.notify(QUEUED)
        return resumed

    def is_paused(self) -> bool:
        with self._db.read() as conn:
            return conn.first(_PAUSED) is not None
