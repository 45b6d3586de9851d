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


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL


class Priority:
    """`X-Fal-Queue-Priority`: clients can only lower their priority; higher numbers run first."""

    NORMAL = 0
    LOW = -10

    @staticmethod
    def from_header(value: str | None) -> int:
        # Unknown values are ignored, as on fal.
        return Priority.LOW if (value or "").strip().lower() == "low" else Priority.NORMAL


CANCELLED_MESSAGE = "Request cancelled by the client."
