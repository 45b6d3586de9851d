"""fal's queue API at the root of the base URL: submit, status, status stream, result, cancel (fal-protocol.md §4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from reimagine.api.admission import admit, submit_job
from reimagine.api.auth import ApiKeyDep, SubmitKeyDep, authorize, require_key
from reimagine.api.deps import SettingsDep
from reimagine.api.reads import read
from reimagine.api.state import state_of
from reimagine.api.urls import base_url
from reimagine.api.wire import QUEUE_PREFIX, job_headers, log_entry, request_urls, result_response, status_body
from reimagine.jobs import FAL_STATUS, TERMINAL
from reimagine.queue.keys import Scope
from reimagine.queue.models import CancelOutcome, JobResult
from reimagine.schemas import QueueStatus, ReimagineOutput

router = APIRouter(redirect_slashes=False)

# Submit and status (like the sync run in run.py) take their key and settings with plain calls instead of FastAPI
# dependencies: on these, the hottest routes, solving the dependencies cost about as much as the handler's own
# work (bench/SERVING.md). Same checks, same 401 bodies.

_KEEPALIVE_S = 15.0
_ENDPOINT_PATHS = [f"/{QUEUE_PREFIX}/3.2", f"/{QUEUE_PREFIX}"]
# Status calls drop the endpoint's sub-path, but accept it (and trailing slashes) as the fal SDK may send them.
_REQUEST_PREFIXES = [f"/{QUEUE_PREFIX}/requests", f"/{QUEUE_PREFIX}/3.2/requests"]

_INPUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReimagineInput"}}},
    }
}


def _both(path: str) -> list[str]:
    return [path, path + "/"]


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _not_found(job_id: str) -> JSONResponse:
    # No x-fal-request-id: an unknown id is whatever the caller put in the path, and may not be a valid header
    # value (a control or non-Latin-1 character would fail the response).
    return JSONResponse({"detail": f"Request {job_id} not found"}, status_code=404)


def _is_possible_id(job_id: str) -> bool:
    # Ours are UUIDs. An id with a control character names no request, and is not sent to the store: PostgreSQL
    # answers a NUL in a text parameter with an error, not with "no rows".
    return job_id.isprintable()


def _owned_result(request: Request, job_id: str, key_id: str) -> JobResult | None:
    if not _is_possible_id(job_id):
        return None
    job: JobResult | None = state_of(request).store.get_result(job_id)
    # Another key's request is indistinguishable from a missing one.
    return job if job is not None and job.key_id == key_id else None


async def submit_request(request: Request) -> JSONResponse:
    """Queue a request; answer at once with its id and URLs."""
    state = state_of(request)
    settings, key_id = state.settings, (await authorize(request, Scope.SUBMIT)).id
    admitted = await admit(request, settings, key_id)
    if isinstance(admitted, JSONResponse):
        return admitted
    submitted = await submit_job(state, admitted, is_sync=False)
    if isinstance(submitted, JSONResponse):
        return submitted
    job, position = submitted
    body = {
        # A new job is IN_QUEUE; an `Idempotency-Key` replay answers with the earlier job as it is now.
        "status": FAL_STATUS[job.status],
        "request_id": job.id,
        **request_urls(admitted.base_url, job.id),
        "queue_position": position,
        "gateway_request_id": job.id,
    }
    return JSONResponse(body, headers=job_headers(job.id))


async def get_status(request: Request, request_id: str) -> JSONResponse:
    """Status: 202 while queued or running, 200 once completed."""
    state = state_of(request)
    settings, key_id = state.settings, await require_key(request)
    if not _is_possible_id(request_id):
        return _not_found(request_id)
    # One read for the job, its position and its events.
    found = await read(state.store, state.store.status_snapshot, request_id)
    if found is None or found[0].key_id != key_id:
        return _not_found(request_id)
    job, position, events = found
    with_logs = _flag(request.query_params.get("logs"))
    body = status_body(job, base_url(request, settings), position=position, events=events, with_logs=with_logs)
    code = 200 if job.status in TERMINAL else 202
    return JSONResponse(body, status_code=code, headers=job_headers(job.id))


async def stream_status(
    request: Request, settings: SettingsDep, key_id: ApiKeyDep, request_id: str
) -> StreamingResponse | JSONResponse:
    """Server-sent status events until COMPLETED; resumable with Last-Event-ID."""
    state = state_of(request)
    found = await read(state.store, state.store.get_with_position, request_id) if _is_possible_id(request_id) else None
    # Another key's request is indistinguishable from a missing one.
    if found is None or found[0].key_id != key_id:
        return _not_found(request_id)
    with_logs = _flag(request.query_params.get("logs"))
    base = base_url(request, settings)
    try:
        resume_after = int(request.headers.get("last-event-id", "0") or 0)
    except ValueError:
        resume_after = 0

    async def events() -> AsyncIterator[bytes]:
        queue = state.hub.subscribe(request_id)
        try:
            snapshot = await read(state.store, state.store.status_snapshot, request_id)
            assert snapshot is not None
            current, position, history = snapshot
            last_id = history[-1].id if history else 0
            sent_up_to = resume_after
            first = True
            while True:
                if not first:
                    found = await read(state.store, state.store.get_with_position, request_id)
                    assert found is not None
                    current, position = found
                first = False
                new = [e for e in history if e.id > sent_up_to]
                if new or sent_up_to == 0 or current.status in TERMINAL:
                    body = status_body(current, base, position=position, events=history, with_logs=False)
                    if with_logs:
                        # Only the lines not sent yet: the JS client concatenates logs across events.
                        body["logs"] = [entry for e in new if (entry := log_entry(e)) is not None]
                    yield f"id: {last_id}\ndata: {json.dumps(body)}\n\n".encode()
                    sent_up_to = last_id
                if current.status in TERMINAL:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                batch = [event]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                fresh = [e for e in batch if e.id > last_id]
                history.extend(fresh)
                if fresh:
                    last_id = fresh[-1].id
        finally:
            state.hub.unsubscribe(request_id, queue)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={**job_headers(request_id), "cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def get_result(request: Request, key_id: ApiKeyDep, request_id: str) -> Response:
    """The model's answer, replayed exactly (errors included); 400 while the request is not completed."""
    job = await read(state_of(request).store, _owned_result, request, request_id, key_id)
    if job is None:
        return _not_found(request_id)
    if job.status not in TERMINAL:
        return JSONResponse({"detail": "Request is still in progress"}, status_code=400, headers=job_headers(job.id))
    return result_response(job)


async def cancel_request(request: Request, key_id: SubmitKeyDep, request_id: str) -> JSONResponse:
    """Cancel: queued jobs at once, running ones at the next denoising step."""
    state = state_of(request)
    if not _is_possible_id(request_id):
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    outcome = await asyncio.to_thread(state.store.request_cancel, request_id, key_id)
    if outcome == CancelOutcome.NOT_FOUND:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    headers = job_headers(request_id)
    if outcome == CancelOutcome.ALREADY_COMPLETED:
        # 400, not 409: the Python client retries 409 ten times (fal-protocol.md §3.4).
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400, headers=headers)
    state.hub.kick()
    state.notify_workers()
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=headers)


for _path in _ENDPOINT_PATHS:
    for _p in _both(_path):
        router.add_api_route(
            _p,
            submit_request,
            response_model=None,
            methods=["POST"],
            include_in_schema=_p == _ENDPOINT_PATHS[0],
            summary="Submit a request to the queue",
            openapi_extra=_INPUT_BODY,
            responses={200: {"description": "Queued"}, 422: {"description": "Invalid input"}},
        )

# (suffix, handler, method, summary, documented responses) of the per-request routes.
_REQUEST_ROUTES: list[tuple[str, Any, str, str, dict[int | str, dict[str, Any]] | None]] = [
    ("/status", get_status, "GET", "Request status", {200: {"model": QueueStatus}, 202: {"model": QueueStatus}}),
    ("/status/stream", stream_status, "GET", "Request status as server-sent events", None),
    ("", get_result, "GET", "Request result", {200: {"model": ReimagineOutput}}),
    ("/cancel", cancel_request, "PUT", "Cancel a request", None),
]
for _prefix in _REQUEST_PREFIXES:
    for _suffix, _handler, _method, _summary, _responses in _REQUEST_ROUTES:
        for _p in _both(f"{_prefix}/{{request_id}}{_suffix}"):
            router.add_api_route(
                _p,
                _handler,
                response_model=None,
                methods=[_method],
                # One documented path per operation; the variants exist for clients that send them.
                include_in_schema=_prefix == _REQUEST_PREFIXES[0] and not _p.endswith("/"),
                summary=_summary,
                responses=_responses,
            )
