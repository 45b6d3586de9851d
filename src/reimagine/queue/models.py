"""What the store takes and returns: jobs, their outcomes, events, files, webhook deliveries, API keys.

Plain frozen dataclasses and closed enums, no I/O. Every way a job can end is built here (`Outcome`'s factories,
keyed by `reimagine.jobs.ErrorType`), so the worker, the store and the API agree on each one's status code, body
and message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self

from reimagine.jobs import CANCELLED_MESSAGE, ErrorType, JobStatus

if TYPE_CHECKING:
    from reimagine.queue.db import Row


class EventKind(StrEnum):
    """What a job event records (`Event.kind`)."""

    #: a status change: `{"status", ...}` (+ `attempt` on a claim, `error`/`error_type` when finished)
    STATUS = "status"
    #: a log line: `{"message", "level", "timestamp"}`
    LOG = "log"
    #: a denoising step: a log line plus `{"step", "total"}` and maybe a `preview_key`
    PROGRESS = "progress"
    #: derived control maps stored as files: `{"keys": {name: key}}`
    MAPS = "maps"


#: The error types that end a job (the others refuse a request before it is one): the job's terminal status and the
#: HTTP status its result call replays.
_ENDINGS: dict[ErrorType, tuple[JobStatus, int]] = {
    ErrorType.CANCELLED: (JobStatus.CANCELED, 499),
    ErrorType.VALIDATION_ERROR: (JobStatus.FAILED, 422),
    ErrorType.REQUEST_TIMEOUT: (JobStatus.FAILED, 504),
    ErrorType.OUT_OF_MEMORY: (JobStatus.FAILED, 503),
    ErrorType.RUNNER_DISCONNECTED: (JobStatus.FAILED, 503),
    ErrorType.INTERNAL_ERROR: (JobStatus.FAILED, 500),
    ErrorType.POISONED: (JobStatus.FAILED, 500),
}


@dataclass(frozen=True)
class Outcome:
    """How a job ended: the terminal status plus the HTTP answer its result call replays."""

    status: JobStatus
    result_status: int
    result_body: dict[str, Any]
    error: str | None = None
    error_type: ErrorType | None = None
    inference_time_s: float | None = None
    #: seconds of denoising on the device (usage)
    gpu_s: float | None = None
    #: bytes of the files the job wrote (usage)
    output_bytes: int | None = None

    @classmethod
    def succeeded(
        cls, body: dict[str, Any], inference_time_s: float, *, gpu_s: float | None = None, output_bytes: int = 0
    ) -> Outcome:
        return cls(
            JobStatus.SUCCEEDED, 200, body, inference_time_s=inference_time_s, gpu_s=gpu_s, output_bytes=output_bytes
        )

    @classmethod
    def failed(cls, error_type: ErrorType, message: str, *, detail: Any = None) -> Outcome:
        """Every unsuccessful end, as fal's request errors look: `{"detail", "error_type"}`.

        `detail` replaces `message` as the body's `detail` (fal's 422 list of field errors).
        """
        status, code = _ENDINGS[error_type]
        body = {"detail": message if detail is None else detail, "error_type": error_type.value}
        return cls(status, code, body, message, error_type)

    @classmethod
    def cancelled(cls) -> Outcome:
        return cls.failed(ErrorType.CANCELLED, CANCELLED_MESSAGE)

    @classmethod
    def start_timeout(cls) -> Outcome:
        return cls.failed(ErrorType.REQUEST_TIMEOUT, "Request timed out before it started")

    @classmethod
    def runner_disconnected(cls) -> Outcome:
        return cls.failed(ErrorType.RUNNER_DISCONNECTED, "Request failed: its worker died (X-Fal-No-Retry)")

    @classmethod
    def poisoned(cls, attempts: int) -> Outcome:
        return cls.failed(ErrorType.POISONED, f"Request failed: its worker died {attempts} times while running it")

    @classmethod
    def out_of_memory(cls) -> Outcome:
        return cls.failed(ErrorType.OUT_OF_MEMORY, "Out of memory while generating; not retried")

    @classmethod
    def internal(cls, exc: BaseException) -> Outcome:
        return cls.failed(ErrorType.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}")


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
    #: `X-Fal-No-Retry`: a worker death fails the job instead of re-running it
    no_retry: bool = False
    #: `X-Fal-Store-IO: 0` (False): the input is erased once the job finishes
    store_io: bool = True
    #: `X-Fal-Object-Lifecycle-Preference`: the job's files expire this long after they are written
    file_ttl_s: float | None = None
    #: size of the request body, for usage
    input_bytes: int = 0
    #: `fal_max_queue_length`: refuse (`QueueFull(per_key=True)`) when the key already has this many waiting
    max_queue_length: int | None = None
    #: `Idempotency-Key` and the hash of the body it was sent with
    idempotency_key: str | None = None
    body_hash: str | None = None


@dataclass(frozen=True)
class JobState:
    """A job as a status call answers it: no input and no result body (either may be megabytes of data URI)."""

    seq: int
    id: str
    key_id: str
    status: JobStatus
    priority: int
    #: place in the fair round between keys (claim order: priority, turn, seq)
    turn: int
    result_status: int | None
    error: str | None
    error_type: ErrorType | None
    attempts: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    inference_time_s: float | None

    #: the columns a status read selects (`reads.py`)
    COLUMNS: ClassVar[str] = (
        "seq, id, key_id, status, priority, turn, result_status, error, error_type, attempts, created_at,"
        " started_at, completed_at, inference_time_s"
    )

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls(**cls._values(row._mapping))

    @staticmethod
    def _values(m: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "seq": int(m["seq"]),
            "id": m["id"],
            "key_id": m["key_id"],
            "status": JobStatus(m["status"]),
            "priority": int(m["priority"]),
            "turn": int(m["turn"]),
            "result_status": m["result_status"],
            "error": m["error"],
            "error_type": ErrorType(m["error_type"]) if m["error_type"] is not None else None,
            "attempts": int(m["attempts"]),
            "created_at": m["created_at"],
            "started_at": m["started_at"],
            "completed_at": m["completed_at"],
            "inference_time_s": m["inference_time_s"],
        }


@dataclass(frozen=True)
class JobResult(JobState):
    """A job with the answer its result call replays (a finished job's `result_body` is that answer's JSON)."""

    result_body: str | None

    COLUMNS: ClassVar[str] = JobState.COLUMNS + ", result_body"

    @staticmethod
    def _values(m: Mapping[str, Any]) -> dict[str, Any]:
        return {**JobState._values(m), "result_body": m["result_body"]}


@dataclass(frozen=True)
class Job(JobResult):
    """All of a job: what a worker claims (its `input`, kept in the `job_inputs` table) and runs it under."""

    endpoint: str
    input: dict[str, Any]
    is_sync: bool
    webhook_url: str | None
    base_url: str
    lease_owner: str | None
    lease_expires_at: float | None
    fence: int
    cancel_requested: bool
    start_deadline_at: float | None
    no_retry: bool = False
    store_io: bool = True
    file_ttl_s: float | None = None
    input_bytes: int = 0
    gpu_s: float | None = None
    output_bytes: int | None = None

    @classmethod
    def from_row(cls, row: Row, *, input: dict[str, Any] | None = None) -> Self:
        """A `jobs` row with its `input` column joined in, or `input` as a dict when the caller has it already."""
        m = row._mapping
        if input is None:
            # None when the job has no input row any more (`X-Fal-Store-IO: 0` keeps `{}` instead, see transitions).
            raw = m["input"]
            input = json.loads(raw) if raw is not None else {}
        return cls(**cls._values(m), input=input)

    @staticmethod
    def _values(m: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **JobResult._values(m),
            "endpoint": m["endpoint"],
            "is_sync": bool(m["is_sync"]),
            "webhook_url": m["webhook_url"],
            "base_url": m["base_url"],
            "lease_owner": m["lease_owner"],
            "lease_expires_at": m["lease_expires_at"],
            "fence": int(m["fence"]),
            "cancel_requested": bool(m["cancel_requested"]),
            "start_deadline_at": m["start_deadline_at"],
            "no_retry": bool(m["no_retry"]),
            "store_io": bool(m["store_io"]),
            "file_ttl_s": m["file_ttl_s"],
            "input_bytes": int(m["input_bytes"]),
            "gpu_s": m["gpu_s"],
            "output_bytes": m["output_bytes"],
        }


class QueueFull(Exception):
    """`enqueue` refused: the queue (or, `per_key`, the key's share of it) holds its maximum of waiting jobs."""

    def __init__(self, queued: int, *, per_key: bool = False) -> None:
        super().__init__(f"{queued} jobs are queued" + (" for this key" if per_key else ""))
        self.queued = queued
        self.per_key = per_key


class IdempotencyConflict(Exception):
    """`enqueue` refused: the key's `Idempotency-Key` was used within 24 h for a request with another body."""


class DeleteOutcome(StrEnum):
    #: the job, its events, files and idempotency key are gone
    DELETED = "DELETED"
    #: queued or running: cancel it first
    NOT_FINISHED = "NOT_FINISHED"
    NOT_FOUND = "NOT_FOUND"


class InvalidTransition(Exception):
    """A store call asked for a status change `reimagine.jobs.can_transition` forbids; nothing was written."""


@dataclass(frozen=True)
class FileRow:
    key: str
    kind: str
    content_type: str
    size: int


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
    kind: EventKind
    data: dict[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, row: Row) -> Event:
        m = row._mapping
        return cls(int(m["id"]), m["job_id"], EventKind(m["kind"]), json.loads(m["data"]), m["created_at"])


@dataclass(frozen=True)
class WebhookDelivery:
    id: int
    job_id: str
    url: str
    body: str
    attempts: int
