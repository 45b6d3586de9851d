"""Every write of a job's status, inside a caller's transaction: the only module that changes `jobs.status`.

Each change names the status it moves from and the status it moves to, is checked against
`reimagine.jobs.can_transition` before anything is written (`InvalidTransition` otherwise), and is conditional in SQL
on the row still having the old status, so two writers racing for one job cannot both move it. Each writes its
status event in the same transaction, and a terminal one also its webhook outbox row: a crash can never leave a
finished job without its notification, nor send a notification for a job that did not finish.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from reimagine.jobs import TERMINAL, JobStatus, can_transition
from reimagine.queue import outbox, usage
from reimagine.queue.db import Conn
from reimagine.queue.models import EventKind, InvalidTransition, Job, Outcome
from reimagine.queue.notify import QUEUED

_INSERT_EVENT = sa.text(
    "INSERT INTO events (job_id, kind, data, created_at) VALUES (:job_id, :kind, :data, :now) RETURNING id"
)
_EXPIRED_STARTS = sa.text("SELECT id, webhook_url FROM jobs WHERE status = 'QUEUED' AND start_deadline_at < :now")
#: The claim's pick: the first queued job in claim order (priority, then the fair turn between keys, then age), read
#: from `ix_jobs_queue` (tests/store/test_sqlite_plans.py); `{skip}` leaves out keys at their concurrency limit.
CLAIM_PICK = "SELECT seq FROM jobs WHERE status = 'QUEUED'{skip} ORDER BY priority DESC, turn, seq LIMIT 1"
_CLAIM = (
    "UPDATE jobs SET status = 'RUNNING', lease_owner = :owner, lease_expires_at = :exp,"
    " fence = fence + 1, attempts = attempts + 1, started_at = :now"
    " WHERE seq = ({pick}) AND status = 'QUEUED' RETURNING *"
)
#: `reimagine queue pause` (reimagine.queue.admin): a row here stops every claim.
PAUSED = sa.text("SELECT 1 FROM queue_state WHERE name = 'paused'")
#: Keys running as many jobs as their `max_concurrent` allows. Read on every claim: `api_keys` holds one row per
#: key, and each count reads the key's running jobs from `ix_jobs_key`.
_SATURATED = sa.text(
    "SELECT k.id FROM api_keys k WHERE k.max_concurrent IS NOT NULL"
    " AND k.max_concurrent <= (SELECT COUNT(*) FROM jobs j WHERE j.key_id = k.id AND j.status = 'RUNNING')"
)
#: Claim statements by (dialect, number of keys skipped): a handful of fixed strings.
_CLAIMS: dict[tuple[bool, int], sa.TextClause] = {}
_FINISH = (
    "UPDATE jobs SET status = :status, result_status = :rs, result_body = :rb, error = :error,"
    " error_type = :error_type, completed_at = :now, lease_owner = NULL, lease_expires_at = NULL,"
    " inference_time_s = :it, gpu_s = :gpu_s, output_bytes = :output_bytes"
    " WHERE id = :id AND status = :old"
)
_FINISHED = " RETURNING key_id, input_bytes, store_io"
#: `X-Fal-Store-IO: 0`: the input is needed until the job ends (a re-run reads it), and not after.
_ERASE_INPUT = sa.text("UPDATE job_inputs SET input = '{}' WHERE job_id = :id")
_SELECT_INPUT = sa.text("SELECT input FROM job_inputs WHERE job_id = :id")
_FINISH_ANY = sa.text(_FINISH + _FINISHED)
_FINISH_FENCED = sa.text(_FINISH + " AND fence = :fence" + _FINISHED)
_REQUEUE = sa.text(
    "UPDATE jobs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - :undo"
    " WHERE id = :id AND status = 'RUNNING' AND fence = :fence"
)


def _check(old: JobStatus, new: JobStatus) -> None:
    if not can_transition(old, new):
        raise InvalidTransition(f"a job cannot go from {old.value} to {new.value}")


# Checked once here for the fixed moves written as SQL literals above.
_check(JobStatus.QUEUED, JobStatus.RUNNING)
_check(JobStatus.RUNNING, JobStatus.QUEUED)


def add_event(conn: Conn, job_id: str, kind: EventKind, data: dict[str, Any], now: float) -> int:
    """Record an event of the job; its id orders it among all events."""
    row = conn.rows(_INSERT_EVENT, {"job_id": job_id, "kind": kind.value, "data": json.dumps(data), "now": now})[0]
    # Every write path (enqueue, progress, cancel, finish, re-queue) adds an event, so this one hook wakes API
    # replicas and idle workers on other machines; PostgreSQL delivers it on commit (reimagine.queue.notify).
    conn.notify(job_id)
    if kind == EventKind.STATUS and data.get("status") == JobStatus.QUEUED.value:
        conn.notify(QUEUED)
    return int(row[0])


def add_log(conn: Conn, job_id: str, message: str, level: str, now: float) -> int:
    data = {"message": message, "level": level, "timestamp": datetime.fromtimestamp(now, UTC).isoformat()}
    return add_event(conn, job_id, EventKind.LOG, data, now)


def _claim_statement(is_sqlite: bool, skipped: int) -> sa.TextClause:
    statement = _CLAIMS.get((is_sqlite, skipped))
    if statement is None:
        skip = f" AND key_id NOT IN ({', '.join(f':k{i}' for i in range(skipped))})" if skipped else ""
        pick = CLAIM_PICK.format(skip=skip) + ("" if is_sqlite else " FOR UPDATE SKIP LOCKED")
        statement = _CLAIMS[(is_sqlite, skipped)] = sa.text(_CLAIM.format(pick=pick))
    return statement


def claim_next(conn: Conn, owner: str, lease_s: float, now: float) -> Job | None:
    """QUEUED -> RUNNING for the next job in claim order under `owner`'s lease; expired start deadlines first.

    Claim order is priority, then turn (a fair round between keys: `store.enqueue` gives each job its turn), then
    age. Jobs of a key already running `max_concurrent` jobs are passed over: they wait, and others go first. On
    PostgreSQL two claims at the same instant may both take a job of a key one below its limit (each counts the
    other's claim only once it commits), so a limit can be exceeded by the number of simultaneous claimers.
    """
    expire_start_deadlines(conn, now)
    if conn.first(PAUSED) is not None:
        return None  # `reimagine queue pause`: nothing new starts; submits still queue
    saturated = [row[0] for row in conn.rows(_SATURATED)]
    params: dict[str, object] = {"owner": owner, "exp": now + lease_s, "now": now}
    params.update({f"k{i}": key_id for i, key_id in enumerate(saturated)})
    row = conn.first(_claim_statement(conn.is_sqlite, len(saturated)), params)
    if row is None:
        return None
    stored = conn.first(_SELECT_INPUT, {"id": row._mapping["id"]})
    job = Job.from_row(row, input=json.loads(stored[0]) if stored is not None else {})
    add_event(conn, job.id, EventKind.STATUS, {"status": JobStatus.RUNNING.value, "attempt": job.attempts}, now)
    return job


def finish(
    conn: Conn,
    job_id: str,
    webhook_url: str | None,
    outcome: Outcome,
    now: float,
    *,
    old: JobStatus,
    fence: int | None = None,
) -> bool:
    """`old` -> the outcome's terminal status (only if the job still has `old`, and `fence` when given).

    Returns whether the job changed; writes its terminal event, its key's usage and, with a `webhook_url`, its
    outbox row.
    """
    if outcome.status not in TERMINAL:
        raise InvalidTransition(f"an outcome ends a job; {outcome.status.value} does not")
    _check(old, outcome.status)
    params = {
        "status": outcome.status.value,
        "rs": outcome.result_status,
        "rb": json.dumps(outcome.result_body),
        "error": outcome.error,
        "error_type": outcome.error_type.value if outcome.error_type is not None else None,
        "now": now,
        "it": outcome.inference_time_s,
        "gpu_s": outcome.gpu_s,
        "output_bytes": outcome.output_bytes,
        "id": job_id,
        "old": old.value,
    }
    if fence is None:
        finished = conn.first(_FINISH_ANY, params)
    else:
        finished = conn.first(_FINISH_FENCED, {**params, "fence": fence})
    if finished is None:
        return False
    if not finished[2]:
        conn.changed(_ERASE_INPUT, {"id": job_id})
    usage.add(
        conn,
        finished[0],
        job_id,
        now,
        succeeded=outcome.status == JobStatus.SUCCEEDED,
        gpu_s=outcome.gpu_s,
        input_bytes=int(finished[1]),
        output_bytes=outcome.output_bytes,
    )
    data = {
        "status": outcome.status.value,
        "error": outcome.error,
        "error_type": outcome.error_type.value if outcome.error_type is not None else None,
    }
    add_event(conn, job_id, EventKind.STATUS, data, now)
    if webhook_url:
        outbox.add_delivery(conn, job_id, webhook_url, outcome, now)
    return True


def requeue(conn: Conn, job_id: str, fence: int, now: float, *, undo_attempt: bool) -> bool:
    """RUNNING -> QUEUED (a lease lost to a crash, or a claim given back unstarted: then the attempt is undone)."""
    changed = conn.changed(_REQUEUE, {"id": job_id, "fence": fence, "undo": 1 if undo_attempt else 0})
    if changed != 1:
        return False
    add_event(conn, job_id, EventKind.STATUS, {"status": JobStatus.QUEUED.value}, now)
    return True


def expire_start_deadlines(conn: Conn, now: float) -> None:
    """QUEUED -> FAILED for jobs whose start deadline passed (504 with `X-Fal-Request-Timeout-Type: user`)."""
    for row in conn.rows(_EXPIRED_STARTS, {"now": now}):
        finish(conn, row[0], row[1], Outcome.start_timeout(), now, old=JobStatus.QUEUED)
