"""Sync runs under `/run` (fal's run host: `FAL_RUN_HOST=host:port/run`), plain and as server-sent events.

A sync run is a queued job whose caller waits: it gets the same priorities, limits and durability, and a client
that disconnects cancels it (nobody is left to read the answer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from reimagine.api.admission import NO_WORKER_RETRY_AFTER, admit, new_request_id, submit_job
from reimagine.api.auth import SubmitKeyDep, authorize
from reimagine.api.deps import SettingsDep
from reimagine.api.reads import read
from reimagine.api.state import AppState, state_of
from reimagine.api.urls import base_url
from reimagine.api.wire import QUEUE_PREFIX, job_headers, request_urls, result_response, status_body
from reimagine.config import Settings
from reimagine.jobs import TERMINAL, ErrorType, JobStatus
from reimagine.queue.keys import Scope
from reimagine.queue.models import Event, EventKind, JobResult, JobState
from reimagine.schemas import ReimagineOutput

router = APIRouter(redirect_slashes=False)

_TERMINAL = {status.value for status in TERMINAL}

_INPUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReimagineInput"}}},
    }
}


class _Disconnected(Exception):
    pass


class _LeftQueued(Exception):
    """The run's job is (back) in the queue and will not run soon: the caller is answered a retryable 503 now.

    Either the server is shutting down (the job runs once a worker is back), or no worker of this replica can
    start (the job runs once one is up). The job is not cancelled: its result stays readable by request id.
    """

    def __init__(self, error_type: ErrorType, detail: str) -> None:
        super().__init__(detail)
        self.error_type, self.detail = error_type, detail


async def _wait_terminal(
    request: Request, state: AppState, job_id: str, queue: asyncio.Queue[Event], timeout_s: float, *, joined: bool
) -> JobResult | None:
    """The finished job, once the hub delivers its terminal status event (or a read finds it finished)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # Subscribed before submitting, so no event is missed; the periodic read covers a lost hub tail. A job joined
    # through `Idempotency-Key` is read first: it may have finished before the subscription.
    check_store = joined
    while True:
        stuck = _why_it_will_not_run(state)
        if check_store or stuck is not None:
            job: JobResult | None = state.hub.finished(job_id)
            if job is None:
                job = await read(state.store, state.store.get_result, job_id)
            if job is not None and job.status in TERMINAL:
                return job
            if stuck is not None and job is not None and job.status == JobStatus.QUEUED:
                # No worker claims it soon (a running one finishes, or is given back and then this).
                raise stuck
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(min(remaining, 1.0)):  # no task per wait, unlike `wait_for`
                event = await queue.get()
        except TimeoutError:
            # Looked for only when nothing happened for a second: the check costs as much as the rest of a
            # no-op run, and a caller gone for a second more costs nothing.
            if await request.is_disconnected():
                raise _Disconnected from None
            check_store = True
            continue
        check_store = event.kind == EventKind.STATUS and event.data["status"] in _TERMINAL
        while not queue.empty() and not check_store:
            event = queue.get_nowait()
            check_store = event.kind == EventKind.STATUS and event.data["status"] in _TERMINAL


def _why_it_will_not_run(state: AppState) -> _LeftQueued | None:
    """Why a queued job would not start soon on this replica (looked at once a second by each waiting run)."""
    if state.draining.is_set():
        return _LeftQueued(
            ErrorType.SHUTTING_DOWN,
            "The server is shutting down; the request stays queued and runs when the server is back",
        )
    cause = state.unavailable()
    if cause is not None:
        # The same refusal a new submit gets (admission.submit_job), but this request is already queued.
        return _LeftQueued(
            ErrorType.RUNNER_SCHEDULING_FAILURE,
            f"No worker can run this request: {cause}. It stays queued and runs once a worker is up",
        )
    return None


async def _cancel_if_unfinished(state: AppState, job_id: str, key_id: str) -> None:
    await asyncio.to_thread(state.store.request_cancel, job_id, key_id)
    state.notify_workers()


async def _submit_watched(
    request: Request, settings: Settings, key_id: str
) -> tuple[JobState, asyncio.Queue[Event], bool] | JSONResponse:
    """Admit and enqueue a sync run, subscribed to its events; or the refusal to send back.

    The flag says the run joined an earlier job (`Idempotency-Key`) instead of making one.
    """
    state = state_of(request)
    admitted = await admit(request, settings, key_id)
    if isinstance(admitted, JSONResponse):
        return admitted
    # Subscribe before the job exists, so that even an instant completion is not missed.
    job_id = new_request_id()
    queue = state.hub.subscribe(job_id)
    submitted = await submit_job(state, admitted, is_sync=True, job_id=job_id)
    if isinstance(submitted, JSONResponse):
        state.hub.unsubscribe(job_id, queue)
        return submitted
    job = submitted[0]
    if job.id != job_id:
        # An `Idempotency-Key` replay: this run waits for the earlier job (finished already, perhaps).
        state.hub.unsubscribe(job_id, queue)
        return job, state.hub.subscribe(job.id), True
    return job, queue, False


async def run_sync(request: Request) -> Response:
    """Run and wait: the model's answer, or its error, in the response."""
    state = state_of(request)
    # Plain calls, not FastAPI dependencies, on this hot route: see the note in queue.py.
    settings, key_id = state.settings, (await authorize(request, Scope.SUBMIT)).id
    watched = await _submit_watched(request, settings, key_id)
    if isinstance(watched, JSONResponse):
        return watched
    job, queue, joined = watched
    finished = False
    try:
        done = await _wait_terminal(request, state, job.id, queue, settings.sync_timeout_s, joined=joined)
        finished = True
    except _Disconnected:
        error_type = ErrorType.CLIENT_DISCONNECTED.value
        return JSONResponse(
            {"detail": "client disconnected", "error_type": error_type},
            status_code=499,
            headers={"x-fal-error-type": error_type},
        )
    except _LeftQueued as left:
        finished = True  # answered: the job stays queued, and runs once a worker is back
        return _left_queued(request, settings, job.id, left)
    finally:
        state.hub.unsubscribe(job.id, queue)
        if not finished and not joined and not state.draining.is_set():
            # The client went away (task cancelled by the server on disconnect). A joined job is left alone: the
            # call that made it may still be waiting for it; so is a job the server's own shutdown interrupted.
            await asyncio.shield(_cancel_if_unfinished(state, job.id, key_id))
    if done is None:
        # `X-Fal-Request-Timeout-Type: user` is what makes this 504 final for both clients: @fal-ai/client retries
        # any other 504 three times, and each retry would start another job (fal-protocol.md §3.4). The wait is
        # the server's limit, not the model's failure, and the job keeps running: its result is one status call
        # away, so a new job would only cost a second GPU run for the same answer.
        return JSONResponse(
            {
                "detail": "Request timed out; it keeps running and its result stays available",
                "error_type": ErrorType.REQUEST_TIMEOUT.value,
                "request_id": job.id,
            },
            status_code=504,
            headers={
                **job_headers(job.id),
                "x-fal-error-type": ErrorType.REQUEST_TIMEOUT.value,
                "x-fal-request-timeout-type": "user",
            },
        )
    return result_response(done)


#: seconds a client is told to wait before retrying (a new submit is refused with the same `NO_WORKER_RETRY_AFTER`)
_RETRY_AFTER = {ErrorType.SHUTTING_DOWN: "10", ErrorType.RUNNER_SCHEDULING_FAILURE: NO_WORKER_RETRY_AFTER}


def _left_queued(request: Request, settings: Settings, job_id: str, left: _LeftQueued) -> JSONResponse:
    """503 with Retry-After (both fal clients retry it): this run's job will not run soon (`_LeftQueued`).

    The job is not cancelled: it stays queued and runs when a worker is back, and its result can be read from the
    queue URLs given here (a retry of the run would start a second job).
    """
    error_type = left.error_type.value
    urls = request_urls(base_url(request, settings), job_id)
    detail = f"{left.detail}. Its status: {urls['status_url']}; its result, once done: {urls['response_url']}"
    return JSONResponse(
        {"detail": detail, "error_type": error_type, "request_id": job_id, **urls},
        status_code=503,
        headers={**job_headers(job_id), "x-fal-error-type": error_type, "retry-after": _RETRY_AFTER[left.error_type]},
    )


async def run_stream(request: Request, settings: SettingsDep, key_id: SubmitKeyDep) -> StreamingResponse | JSONResponse:
    """Run and stream status events as server-sent events; the last event is the result (or its error)."""
    state = state_of(request)
    watched = await _submit_watched(request, settings, key_id)
    if isinstance(watched, JSONResponse):
        return watched
    job, queue, joined = watched
    base = base_url(request, settings)

    async def events() -> AsyncIterator[bytes]:
        finished = False
        try:
            snapshot = await read(state.store, state.store.status_snapshot, job.id)
            assert snapshot is not None
            current, position, history = snapshot
            first = True
            while True:
                if not first:
                    found = await read(state.store, state.store.get_with_position, job.id)
                    assert found is not None
                    current, position = found
                first = False
                if current.status in TERMINAL:
                    finished = True
                    done = await read(state.store, state.store.get_result, job.id)
                    assert done is not None and done.result_body is not None
                    yield f"data: {done.result_body}\n\n".encode()
                    return
                body = status_body(current, base, position=position, events=history, with_logs=True)
                yield f"data: {json.dumps(body)}\n\n".encode()
                try:
                    history.append(await asyncio.wait_for(queue.get(), timeout=15.0))
                except TimeoutError:
                    yield b": keepalive\n\n"
                while not queue.empty():
                    history.append(queue.get_nowait())
        finally:
            state.hub.unsubscribe(job.id, queue)
            if not finished and not joined and not state.draining.is_set():
                # A stream cut by the server's shutdown leaves its job queued, like a sync run's 503.
                await asyncio.shield(_cancel_if_unfinished(state, job.id, key_id))

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={**job_headers(job.id), "cache-control": "no-store"}
    )


for _path in (f"/run/{QUEUE_PREFIX}/3.2", f"/run/{QUEUE_PREFIX}"):
    for _p in (_path, _path + "/"):
        router.add_api_route(
            _p,
            run_sync,
            response_model=None,
            methods=["POST"],
            include_in_schema=_p == f"/run/{QUEUE_PREFIX}/3.2",
            summary="Run a request and wait for its result",
            openapi_extra=_INPUT_BODY,
            responses={200: {"model": ReimagineOutput}},
        )
    for _p in (_path + "/stream", _path + "/stream/"):
        router.add_api_route(
            _p,
            run_stream,
            response_model=None,
            methods=["POST"],
            include_in_schema=_p == f"/run/{QUEUE_PREFIX}/3.2/stream",
            summary="Run a request, streaming progress as server-sent events",
            openapi_extra=_INPUT_BODY,
        )
