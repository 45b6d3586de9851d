"""A key's own requests: the listing (newest first, cursor pagination) and deletion (data removal on request).

Beyond fal's queue API, which has neither; the queue's per-request routes are in queue.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from reimagine.api.auth import AdminKeyDep, ApiKeyDep
from reimagine.api.reads import read
from reimagine.api.state import state_of
from reimagine.api.urls import base_url
from reimagine.api.wire import QUEUE_PREFIX, job_headers, request_urls
from reimagine.jobs import FAL_STATUS, JobStatus
from reimagine.queue.models import DeleteOutcome, Job

router = APIRouter(redirect_slashes=False)


def _not_found(job_id: str) -> JSONResponse:
    # As queue.py: no x-fal-request-id for an id that may not be a valid header value.
    return JSONResponse({"detail": f"Request {job_id} not found"}, status_code=404)


#: `?status=` of the listing: fal's names, and ours for the finished states.
_LISTED_STATUS: dict[str, tuple[JobStatus, ...]] = {
    "IN_QUEUE": (JobStatus.QUEUED,),
    "IN_PROGRESS": (JobStatus.RUNNING,),
    "COMPLETED": (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED),
    **{status.value: (status,) for status in JobStatus},
}
_MAX_LIMIT = 100


def _bad_query(name: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["query", name], "msg": message, "type": "value_error"}]}, status_code=422)


async def list_requests(request: Request, key_id: ApiKeyDep) -> JSONResponse:
    """This key's requests, newest first; `next_cursor` fetches the next page."""
    state = state_of(request)
    query = request.query_params
    raw_status = query.get("status")
    statuses: tuple[JobStatus, ...] | None = None
    if raw_status:
        statuses = _LISTED_STATUS.get(raw_status.upper())
        if statuses is None:
            return _bad_query("status", f"must be one of {', '.join(_LISTED_STATUS)}, got {raw_status!r}")
    try:
        limit = int(query.get("limit") or 20)
    except ValueError:
        return _bad_query("limit", "must be a whole number")
    if not 1 <= limit <= _MAX_LIMIT:
        return _bad_query("limit", f"must be between 1 and {_MAX_LIMIT}, got {limit}")
    cursor = query.get("cursor") or None
    before: int | None = None
    if cursor is not None:
        try:
            before = int(cursor)
        except ValueError:
            return _bad_query("cursor", "must be a `next_cursor` from a previous page")
    jobs = await read(state.store, state.store.list_jobs, key_id, statuses, limit + 1, before)
    page, more = jobs[:limit], len(jobs) > limit
    base = base_url(request, state.settings)
    return JSONResponse(
        {
            "requests": [listed(job, base) for job in page],
            "next_cursor": str(page[-1].seq) if more else None,
        }
    )


def listed(job: Job, base: str) -> dict[str, Any]:
    """One request in the listing: fal's status fields plus ours (what the playground's history shows)."""
    return {
        "request_id": job.id,
        "status": FAL_STATUS[job.status],
        "state": job.status.value,
        "endpoint": job.endpoint,
        **request_urls(base, job.id),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "error": job.error,
        "error_type": job.error_type,
        "metrics": {"inference_time": job.inference_time_s},
        # `X-Fal-Store-IO: 0` erased the input once the job finished: null here.
        "input": {name: _summarised(value) for name, value in job.input.items()} or None,
        "image_url": _image_url(job),
    }


def _image_url(job: Job) -> str | None:
    """The stored result image's URL, for a thumbnail; none for a data URI (sync_mode), which is the whole image."""
    if job.status != JobStatus.SUCCEEDED or not job.result_body or len(job.result_body) > 65_536:
        return None
    image = json.loads(job.result_body).get("image") or {}
    url = image.get("url")
    return url if isinstance(url, str) and not url.startswith("data:") else None


def _summarised(value: Any) -> Any:
    """An inline image is megabytes: a page of 100 would be too, so the listing names its type and size instead."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > 256:
        return f"{value[: value.find(',') + 1]}... ({len(value)} characters)"
    return value


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


async def delete_request(request: Request, key_id: AdminKeyDep, request_id: str) -> JSONResponse:
    """Remove a finished request: its stored input, result, events and files (data removal on request)."""
    state = state_of(request)
    if not request_id.isprintable():
        return _not_found(request_id)
    outcome, keys = await asyncio.to_thread(state.store.delete_job, request_id, key_id)
    if outcome == DeleteOutcome.NOT_FOUND:
        return _not_found(request_id)
    if outcome == DeleteOutcome.NOT_FINISHED:
        return JSONResponse(
            {"detail": "Request is still queued or running; cancel it first"},
            status_code=400,
            headers=job_headers(request_id),
        )
    for key in keys:
        await asyncio.to_thread(state.storage.delete, key)
    return JSONResponse({"request_id": request_id, "deleted_files": len(keys)}, headers=job_headers(request_id))


# Like the queue's own routes: with and without the endpoint's sub-path, with and without a trailing slash.
for _prefix in (f"/{QUEUE_PREFIX}/requests", f"/{QUEUE_PREFIX}/3.2/requests"):
    for _p in (_prefix, _prefix + "/"):
        router.add_api_route(
            _p,
            list_requests,
            response_model=None,
            methods=["GET"],
            include_in_schema=_p == f"/{QUEUE_PREFIX}/requests",
            summary="This key's requests, newest first (cursor pagination)",
        )
    for _p in (f"{_prefix}/{{request_id}}", f"{_prefix}/{{request_id}}/"):
        router.add_api_route(
            _p,
            delete_request,
            response_model=None,
            methods=["DELETE"],
            include_in_schema=_p == f"/{QUEUE_PREFIX}/requests/{{request_id}}",
            summary="Delete a finished request and its stored input and output",
        )
