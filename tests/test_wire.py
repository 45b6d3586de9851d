"""The status body is built by hand (it answers every poll): it must stay a `QueueStatus`, key for key."""

from __future__ import annotations

import pytest

from reimagine.api.wire import status_body
from reimagine.jobs import ErrorType, JobStatus
from reimagine.queue.models import Event, EventKind, JobState
from reimagine.schemas import QueueStatus

_EVENTS = [
    Event(1, "r", EventKind.STATUS, {"status": "RUNNING", "attempt": 2}, 0.0),
    Event(2, "r", EventKind.LOG, {"message": "hello", "level": "INFO", "timestamp": "2026-01-01T00:00:00+00:00"}, 0.0),
    Event(
        3,
        "r",
        EventKind.PROGRESS,
        {"step": 1, "total": 4, "message": "Step 1/4", "level": "INFO", "timestamp": "2026-01-01T00:00:01+00:00"},
        0.0,
    ),
    Event(4, "r", EventKind.MAPS, {"keys": {"depth": "aa/depth.png"}}, 0.0),
]


def _job(status: JobStatus, error_type: ErrorType | None = None) -> JobState:
    finished = status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
    return JobState(
        seq=7,
        id="r",
        key_id="k",
        status=status,
        priority=0,
        turn=1,
        result_status=(200 if error_type is None else 500) if finished else None,
        error="boom" if error_type is not None else None,
        error_type=error_type,
        attempts=2,
        created_at=1.0,
        started_at=2.0 if status != JobStatus.QUEUED else None,
        completed_at=3.0 if finished else None,
        inference_time_s=0.5 if finished else None,
    )


@pytest.mark.parametrize(
    "job",
    [
        _job(JobStatus.QUEUED),
        _job(JobStatus.RUNNING),
        _job(JobStatus.SUCCEEDED),
        _job(JobStatus.FAILED, ErrorType.INTERNAL_ERROR),
        _job(JobStatus.CANCELED, ErrorType.CANCELLED),
    ],
    ids=lambda job: job.status.value,
)
@pytest.mark.parametrize("with_logs", [False, True])
def test_status_body_agrees_with_the_queue_status_model(job: JobState, with_logs: bool) -> None:
    body = status_body(job, "http://h", position=3, events=_EVENTS, with_logs=with_logs)
    model = QueueStatus.model_validate(body)
    again = model.model_dump(mode="json", exclude_unset=True)
    assert again == body
    assert list(again) == list(body), "same keys, same order"
