"""The webhook outbox: one row per terminal job with a webhook, written in the transaction that finishes the job.

`reimagine.webhooks.WebhookDispatcher` drains it through the two methods of `Outbox` (the slice it names as its
`_Store` Protocol): lock the due deliveries, record each attempt. Any API replica may deliver any row; the lock
(`locked_until`) keeps two from sending the same attempt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from reimagine.queue.db import Conn, Database
from reimagine.queue.models import Outcome, WebhookDelivery

_INSERT = sa.text(
    "INSERT INTO webhook_outbox (job_id, url, body, attempts, next_attempt_at, created_at)"
    " VALUES (:job_id, :url, :body, 0, :now, :now)"
)
_DUE_WHERE = (
    "delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= :now"
    " AND (locked_until IS NULL OR locked_until < :now)"
)
_ANY_DUE = sa.text(f"SELECT 1 FROM webhook_outbox WHERE {_DUE_WHERE} LIMIT 1")
_LOCK_DUE = (
    "UPDATE webhook_outbox SET locked_until = :until WHERE id IN ("
    f"SELECT id FROM webhook_outbox WHERE {_DUE_WHERE} ORDER BY next_attempt_at LIMIT :limit{{skip_locked}}"
    ") RETURNING id, job_id, url, body, attempts"
)
_LOCK_DUE_SQLITE = sa.text(_LOCK_DUE.format(skip_locked=""))
_LOCK_DUE_PG = sa.text(_LOCK_DUE.format(skip_locked=" FOR UPDATE SKIP LOCKED"))
_RECORD = sa.text(
    "UPDATE webhook_outbox SET attempts = attempts + 1, last_status = :status, last_error = :error,"
    " locked_until = NULL, delivered_at = :delivered, gave_up_at = :gave_up,"
    " next_attempt_at = COALESCE(:next, next_attempt_at) WHERE id = :id"
)
_OF_JOB = sa.text("SELECT * FROM webhook_outbox WHERE job_id = :id ORDER BY id")


def webhook_body(job_id: str, outcome: Outcome) -> str:
    """fal's webhook payload (fal-protocol.md §9) for a terminal outcome."""
    body: dict[str, Any] = {"request_id": job_id, "gateway_request_id": job_id}
    if outcome.result_status == 200:
        body.update(status="OK", payload=outcome.result_body)
    else:
        body.update(status="ERROR", error=f"Invalid status code: {outcome.result_status}", payload=outcome.result_body)
    return json.dumps(body, separators=(",", ":"))


def add_delivery(conn: Conn, job_id: str, url: str, outcome: Outcome, now: float) -> None:
    """Queue the job's webhook, due at once (called by `transitions.finish`, in its transaction)."""
    conn.changed(_INSERT, {"job_id": job_id, "url": url, "body": webhook_body(job_id, outcome), "now": now})


class Outbox:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def due_webhooks(self, now: float, limit: int = 20, lock_s: float = 60.0) -> list[WebhookDelivery]:
        """Lock and return deliveries whose next attempt is due (one API replica delivers each)."""
        # Checked with a read first: this runs after every finished job, and most have no webhook, so the usual
        # answer costs no write transaction (which would wait for, and hold up, the workers' writes).
        with self._db.read() as conn:
            if conn.first(_ANY_DUE, {"now": now}) is None:
                return []
        with self._db.write() as conn:
            rows = conn.rows(
                _LOCK_DUE_SQLITE if conn.is_sqlite else _LOCK_DUE_PG,
                {"now": now, "limit": limit, "until": now + lock_s},
            )
        return [WebhookDelivery(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]

    def record_webhook_attempt(
        self, delivery_id: int, *, status: int | None, error: str | None, next_attempt_at: float | None
    ) -> None:
        """Record one delivery attempt: delivered (2xx), retry later, or give up (`next_attempt_at` None)."""
        now = self._clock()
        delivered = status is not None and 200 <= status < 300
        with self._db.write() as conn:
            conn.changed(
                _RECORD,
                {
                    "status": status,
                    "error": error,
                    "delivered": now if delivered else None,
                    "gave_up": now if (not delivered and next_attempt_at is None) else None,
                    "next": next_attempt_at,
                    "id": delivery_id,
                },
            )

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's outbox rows, column by column (for tests and operators)."""
        with self._db.read() as conn:
            return [dict(row._mapping) for row in conn.rows(_OF_JOB, {"id": job_id})]
