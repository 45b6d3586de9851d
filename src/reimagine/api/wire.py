"""Translation between jobs and fal's wire shapes: the one place where a job becomes a fal request."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from pydantic import ValidationError

from reimagine.jobs import FAL_STATUS, ErrorType, JobStatus
from reimagine.queue.models import Event, EventKind, JobResult, JobState

QUEUE_PREFIX = "bria/reimagine"
_FINISHED = frozenset((JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED))


def request_urls(base: str, job_id: str) -> dict[str, str]:
    # No endpoint sub-path: fal-client's get_handle() must rebuild exactly these (fal-protocol.md §1).
    response_url = f"{base}/{QUEUE_PREFIX}/requests/{job_id}"
    return {
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }


def file_url(base: str, key: str) -> str:
    return f"{base}/files/{key}"


def log_entry(event: Event) -> dict[str, Any] | None:
    """An event as a fal log line, or None for events that are not log lines."""
    data = event.data
    if event.kind in (EventKind.LOG, EventKind.PROGRESS) and "message" in data:
        return {
            "message": data["message"],
            "level": data.get("level", "INFO"),
            "source": "USER",
            "timestamp": data["timestamp"],
        }
    return None


def extras(base: str, events: list[Event]) -> dict[str, Any]:
    """Our extra status key: progress, latest preview and derived maps (the playground reads it)."""
    out: dict[str, Any] = {}
    for event in events:
        data = event.data
        if event.kind == EventKind.PROGRESS:
            out["progress"] = {"step": data["step"], "total": data["total"]}
            if data.get("preview_key"):
                out["preview_url"] = file_url(base, data["preview_key"])
        elif event.kind == EventKind.MAPS:
            out["maps"] = {name: file_url(base, key) for name, key in data["keys"].items()}
        elif event.kind == EventKind.STATUS and data.get("attempt"):
            out["attempt"] = data["attempt"]
    return out


def status_body(
    job: JobState,
    base: str,
    *,
    position: int,
    events: list[Event],
    with_logs: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Built directly (same keys, same order as `QueueStatus.model_dump()`): this runs for every status call.
    response_url = f"{base}/{QUEUE_PREFIX}/requests/{job.id}"
    body: dict[str, Any] = {
        "status": FAL_STATUS[job.status],
        "request_id": job.id,
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }
    if job.status == JobStatus.QUEUED:
        body["queue_position"] = position
    body["logs"] = [entry for event in events if (entry := log_entry(event)) is not None] if with_logs else None
    if job.status in _FINISHED:
        body["metrics"] = {"inference_time": job.inference_time_s}
        body["error"] = job.error
        body["error_type"] = job.error_type
    else:
        body["metrics"] = {}
    body["reimagine"] = {"state": job.status.value, **(extra if extra is not None else extras(base, events))}
    return body


def job_headers(job_id: str) -> dict[str, str]:
    return {"x-fal-request-id": job_id}


def result_response(job: JobResult) -> Response:
    """Replay the model's answer exactly: status code, body, and fal's error headers."""
    assert job.result_status is not None and job.result_body is not None
    headers = job_headers(job.id)
    if job.error_type and job.result_status != 200:
        headers["x-fal-error-type"] = job.error_type
    if job.error_type == ErrorType.REQUEST_TIMEOUT and job.result_status == 504:
        headers["x-fal-request-timeout-type"] = "user"
    # The stored body is already JSON: sent as is, not parsed and re-encoded (an inline image is megabytes).
    return Response(job.result_body, status_code=job.result_status, headers=headers, media_type="application/json")


def validation_detail(exc: ValidationError, prefix: str = "body") -> list[dict[str, Any]]:
    """Pydantic errors as fal's 422 `detail`, without echoing the (possibly huge) input back."""
    detail = []
    for error in exc.errors(include_url=False, include_input=False):
        item: dict[str, Any] = {"loc": [prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        if "ctx" in error:
            item["ctx"] = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in error["ctx"].items()}
        detail.append(item)
    return detail
