"""Job state: the closed status enum, its transitions and the fal wire mapping. Pure, no I/O."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    #: accepted, waiting for a worker
    QUEUED = "QUEUED"
    #: claimed by a worker that holds a lease on it
    RUNNING = "RUNNING"
    #: finished with an image
    SUCCEEDED = "SUCCEEDED"
    #: finished with an error (model error, OOM, poisoned, start timeout)
    FAILED = "FAILED"
    #: cancelled by its owner before it finished
    CANCELED = "CANCELED"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELED}),
    # RUNNING -> QUEUED is a lease lost to a crash: the job is re-run.
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}

#: fal knows three states; failures and cancels are COMPLETED with an `error` (fal-protocol.md §4.2).
FAL_STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "IN_QUEUE",
    JobStatus.RUNNING: "IN_PROGRESS",
    JobStatus.SUCCEEDED: "COMPLETED",
    JobStatus.FAILED: "COMPLETED",
    JobStatus.CANCELED: "COMPLETED",
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in _TRANSITIONS[old]


class Priority:
    """`X-Fal-Queue-Priority`: clients can only lower their priority; higher numbers run first."""

    NORMAL = 0
    LOW = -10

    @staticmethod
    def from_header(value: str | None) -> int:
        # Unknown values are ignored, as on fal.
        return Priority.LOW if (value or "").strip().lower() == "low" else Priority.NORMAL


CANCELLED_MESSAGE = "Request cancelled by the client."


class ErrorType(StrEnum):
    """`error_type` of a failure, in the body and in `X-Fal-Error-Type`: fal's documented name where one fits."""

    # --- fal's "Request Error Types" -----------------------------------------------------------------------------
    #: 504: a start deadline passed (`X-Fal-Request-Timeout-Type: user`) or a sync run outwaited the server
    REQUEST_TIMEOUT = "request_timeout"
    #: 503: no worker can start (each failed `worker_start_failures` times in a row): a submit is refused before
    #: queueing; a sync run already waiting is answered at once, its job left queued
    RUNNER_SCHEDULING_FAILURE = "runner_scheduling_failure"
    #: 503: the worker died while running a request sent with `X-Fal-No-Retry`
    RUNNER_DISCONNECTED = "runner_disconnected"
    #: 500: the model raised an unexpected exception
    INTERNAL_ERROR = "internal_error"
    #: 499: a sync run's caller went away before its answer (the job is cancelled)
    CLIENT_DISCONNECTED = "client_disconnected"
    # --- ours ----------------------------------------------------------------------------------------------------
    #: 503: the accelerator ran out of memory; not retried
    OUT_OF_MEMORY = "out_of_memory"
    #: 500: the request took down `max_attempts` workers and is not tried again
    POISONED = "poisoned"
    #: 499: cancelled by its owner (fal's apps answer the same 499; fal's own name is `client_cancelled`)
    CANCELLED = "cancelled"
    #: 422: an input was unusable once the worker looked at it (a URL that cannot be fetched, an unreadable image)
    VALIDATION_ERROR = "validation_error"
    #: 429: the server's queue is at `--max-queue-depth`, or the key's at `fal_max_queue_length`
    QUEUE_FULL = "queue_full"
    #: 429: the key submits faster than `--submit-rate-per-min`
    RATE_LIMITED = "rate_limited"
    #: 503, retryable: a sync run's server is shutting down before its job could run; the job stays queued
    SHUTTING_DOWN = "shutting_down"
    #: 503: the file storage does not answer (a missing S3 bucket, say); the detail names it
    STORAGE_UNAVAILABLE = "storage_unavailable"
