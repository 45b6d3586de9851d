"""Rows of the job store as plain dataclasses; what the store returns and takes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reimagine.jobs import CANCELLED_MESSAGE, ErrorType, JobStatus


@dataclass(frozen=True)
class NewJob:
    id: str
    key_id: str
    endpoint: str
    input: dict[str, Any]
    priority: int = 0
    webhook_url: str | None = None
    start_deadline_at: float | None = None
    is_sync: bool = False
    base_url: str = ""


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    key_id: str
    endpoint: str
    status: JobStatus
    priority: int
    input: dict[str, Any]
    is_sync: bool
    webhook_url: str | None
    base_url: str
    result_status: int | None
    result_body: str | None
    error: str | None
    error_type: str | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: float | None
    fence: int
    cancel_requested: bool
    start_deadline_at: float | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    inference_time_s: float | None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping
        return cls(
            seq=int(m["seq"]),
            id=m["id"],
            key_id=m["key_id"],
            endpoint=m["endpoint"],
            status=JobStatus(m["status"]),
            priority=int(m["priority"]),
            input=json.loads(m["input"]),
            is_sync=bool(m["is_sync"]),
            webhook_url=m["webhook_url"],
            base_url=m["base_url"],
            result_status=m["result_status"],
            result_body=m["result_body"],
            error=m["error"],
            error_type=m["error_type"],
            attempts=int(m["attempts"]),
            lease_owner=m["lease_owner"],
            lease_expires_at=m["lease_expires_at"],
            fence=int(m["fence"]),
            cancel_requested=bool(m["cancel_requested"]),
            start_deadline_at=m["start_deadline_at"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            completed_at=m["completed_at"],
            inference_time_s=m["inference_time_s"],
        )


class QueueFull(Exception):
    """`enqueue` refused: the queue already holds its maximum number of waiting jobs."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"{queued} jobs are queued")
        self.queued = queued


@dataclass(frozen=True)
class FileRow:
    key: str
    kind: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Outcome:
    """How a job ended: the terminal status plus the HTTP answer its result call replays."""

    status: JobStatus
    result_status: int
    result_body: dict[str, Any]
    error: str | None = None
    error_type: str | None = None
    inference_time_s: float | None = None


def failed_outcome(result_status: int, message: str, error_type: ErrorType) -> Outcome:
    """A failure as fal's request errors look: `{"detail", "error_type"}`, replayed by the result call."""
    return Outcome(
        status=JobStatus.FAILED,
        result_status=result_status,
        result_body={"detail": message, "error_type": error_type.value},
        error=message,
        error_type=error_type.value,
    )


def cancelled_outcome() -> Outcome:
    return Outcome(
        status=JobStatus.CANCELED,
        result_status=499,
        result_body={"detail": CANCELLED_MESSAGE, "error_type": ErrorType.CANCELLED.value},
        error=CANCELLED_MESSAGE,
        error_type=ErrorType.CANCELLED.value,
    )


class CancelOutcome(StrEnum):
    #: queued job removed at once
    CANCELED = "CANCELED"
    #: running job signalled; it stops at the next denoising step
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


class LeaseState(StrEnum):
    HELD = "HELD"
    CANCEL = "CANCEL"
    LOST = "LOST"


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str
    kind: str
    data: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class WebhookDelivery:
    id: int
    job_id: str
    url: str
    body: str
    attempts: int


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    revoked_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def webhook_body(job_id: str, outcome: Outcome) -> str:
    """fal's webhook payload (fal-protocol.md §9) for a terminal outcome."""
    body: dict[str, Any] = {"request_id": job_id, "gateway_request_id": job_id}
    if outcome.result_status == 200:
        body.update(status="OK", payload=outcome.result_body)
    else:
        body.update(status="ERROR", error=f"Invalid status code: {outcome.result_status}", payload=outcome.result_body)
    return json.dumps(body, separators=(",", ":"))
