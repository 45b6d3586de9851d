"""The store's reads: jobs, queue positions, events, leases. Nothing here writes.

The API calls these from its event loop on SQLite (`reads_inline`: a read there takes tens of microseconds and
never waits for a writer) and from a thread on PostgreSQL (`api/reads.py`).
"""

from __future__ import annotations

import sqlalchemy as sa

from reimagine.jobs import JobStatus
from reimagine.queue.db import Conn, Database
from reimagine.queue.models import Event, Job, JobResult, JobState, LeaseState

#: All of a job, its input joined in from `job_inputs`: for workers and tools, never for a status call.
_FULL = "SELECT j.*, i.input FROM jobs j LEFT JOIN job_inputs i ON i.job_id = j.id"
_SELECT_JOB = sa.text(_FULL + " WHERE j.id = :id")
#: Status polls and streams select only what they answer: never the input, nor the result body.
_SELECT_STATE = sa.text(f"SELECT {JobState.COLUMNS} FROM jobs WHERE id = :id")
_SELECT_RESULT = sa.text(f"SELECT {JobResult.COLUMNS} FROM jobs WHERE id = :id")
_COUNT_QUEUED = sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED'")
_COUNT_BY_STATUS = sa.text("SELECT status, COUNT(*) FROM jobs GROUP BY status")
#: Jobs ahead of one in claim order, read from `ix_jobs_queue` alone (tests/store/test_sqlite_plans.py).
POSITION = sa.text(
    "SELECT COUNT(*) FROM jobs WHERE status = 'QUEUED' AND (priority > :p OR (priority = :p AND"
    " (turn < :t OR (turn = :t AND seq < :s))))"
)
#: A key's jobs, newest first, from `ix_jobs_key_seq`; `{where}` adds the status filter and the cursor.
_LIST = _FULL + " WHERE j.key_id = :key_id{where} ORDER BY j.seq DESC LIMIT :limit"
_LEASE_STATE = sa.text("SELECT status, fence, cancel_requested FROM jobs WHERE id = :id")
_RUNNING_OWNERS = sa.text("SELECT DISTINCT lease_owner FROM jobs WHERE status = 'RUNNING'")
_JOB_EVENTS = sa.text("SELECT * FROM events WHERE job_id = :id AND id > :after ORDER BY id")
_EVENTS_SINCE = sa.text("SELECT * FROM events WHERE id > :after ORDER BY id LIMIT :limit")
_LAST_EVENT = sa.text("SELECT COALESCE(MAX(id), 0) FROM events")


class JobReads:
    """Read-only queries of the job store (`JobStore` adds the writes)."""

    db: Database

    def get(self, job_id: str) -> Job | None:
        """All of a job, its input parsed: for workers and tools, never for a status call."""
        with self.db.read() as conn:
            row = conn.first(_SELECT_JOB, {"id": job_id})
        return Job.from_row(row) if row is not None else None

    def get_result(self, job_id: str) -> JobResult | None:
        """The job with its result body (the answer a finished job's result call replays), without its input."""
        with self.db.read() as conn:
            row = conn.first(_SELECT_RESULT, {"id": job_id})
        return JobResult.from_row(row) if row is not None else None

    def get_with_position(self, job_id: str) -> tuple[JobState, int] | None:
        """The job's status columns and its queue position (0 unless queued)."""
        with self.db.read() as conn:
            return job_with_position(conn, job_id)

    def status_snapshot(self, job_id: str, after_id: int = 0) -> tuple[JobState, int, list[Event]] | None:
        """The job's status columns, its queue position and its events after `after_id`, read in one snapshot."""
        with self.db.read() as conn:
            found = job_with_position(conn, job_id)
            if found is None:
                return None
            rows = conn.rows(_JOB_EVENTS, {"id": job_id, "after": after_id})
        return found[0], found[1], [Event.from_row(row) for row in rows]

    def count_queued(self) -> int:
        with self.db.read() as conn:
            return int(conn.scalar(_COUNT_QUEUED))

    def count_by_status(self) -> dict[str, int]:
        with self.db.read() as conn:
            return {str(row[0]): int(row[1]) for row in conn.rows(_COUNT_BY_STATUS)}

    def running_owners(self) -> list[str]:
        with self.db.read() as conn:
            return [row[0] for row in conn.rows(_RUNNING_OWNERS) if row[0]]

    def lease_state(self, job_id: str, fence: int) -> LeaseState:
        """Cheap read used at every denoising step: still ours, and not cancelled?"""
        with self.db.read() as conn:
            row = conn.first(_LEASE_STATE, {"id": job_id})
        if row is None or row[0] != JobStatus.RUNNING.value or int(row[1]) != fence:
            return LeaseState.LOST
        return LeaseState.CANCEL if row[2] else LeaseState.HELD

    def events(self, job_id: str, after_id: int = 0) -> list[Event]:
        with self.db.read() as conn:
            return [Event.from_row(row) for row in conn.rows(_JOB_EVENTS, {"id": job_id, "after": after_id})]

    def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        """Events of every job after `after_id`: the API's fan-out tails this."""
        with self.db.read() as conn:
            return [Event.from_row(row) for row in conn.rows(_EVENTS_SINCE, {"after": after_id, "limit": limit})]

    def list_jobs(
        self, key_id: str, statuses: tuple[JobStatus, ...] | None, limit: int, before_seq: int | None
    ) -> list[Job]:
        """`key_id`'s jobs, newest first: at most `limit`, with one of `statuses`, older than `before_seq`."""
        where = ""
        params: dict[str, object] = {"key_id": key_id, "limit": limit}
        if statuses:
            where += f" AND j.status IN ({', '.join(f':s{i}' for i in range(len(statuses)))})"
            params.update({f"s{i}": status.value for i, status in enumerate(statuses)})
        if before_seq is not None:
            where += " AND j.seq < :before"
            params["before"] = before_seq
        with self.db.read() as conn:
            return [Job.from_row(row) for row in conn.rows(sa.text(_LIST.format(where=where)), params)]

    def last_event_id(self) -> int:
        with self.db.read() as conn:
            return int(conn.scalar(_LAST_EVENT))


def job_with_position(conn: Conn, job_id: str) -> tuple[JobState, int] | None:
    row = conn.first(_SELECT_STATE, {"id": job_id})
    if row is None:
        return None
    job = JobState.from_row(row)
    return job, (position(conn, job) if job.status == JobStatus.QUEUED else 0)


def position(conn: Conn, job: JobState) -> int:
    return int(conn.scalar(POSITION, {"p": job.priority, "t": job.turn, "s": job.seq}))
