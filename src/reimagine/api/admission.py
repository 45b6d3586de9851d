"""Admission of a new request, shared by the queue and sync-run surfaces: parse, validate, limit, enqueue."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from reimagine import ENDPOINT_ID
from reimagine.api import platform
from reimagine.api.state import AppState, state_of
from reimagine.api.urls import base_url
from reimagine.api.wire import validation_detail
from reimagine.config import Settings
from reimagine.errors import InputError
from reimagine.jobs import ErrorType, Priority
from reimagine.queue.models import IdempotencyConflict, JobState, NewJob, QueueFull
from reimagine.schemas import ReimagineInput, StrictReimagineInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    key_id: str
    raw: dict[str, Any]
    priority: int
    webhook_url: str | None
    start_deadline_at: float | None
    base_url: str
    options: platform.PlatformOptions = platform.PlatformOptions()
    #: size of the request body (inline data URIs included), for usage
    input_bytes: int = 0


def _error(detail: Any, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def refusal(detail: str, status: int, error_type: ErrorType, headers: dict[str, str] | None = None) -> JSONResponse:
    """A request refused for the server's own reasons (a limit, a full queue): fal's request-error shape."""
    return JSONResponse(
        {"detail": detail, "error_type": error_type.value},
        status_code=status,
        headers={**(headers or {}), "x-fal-error-type": error_type.value},
    )


def _invalid_json(reason: str) -> JSONResponse:
    return _error([{"loc": ["body"], "msg": f"Invalid JSON: {reason}", "type": "json_invalid"}], 422)


def _start_timeout(request: Request) -> float | None | JSONResponse:
    # The docs renamed X-Fal-Request-Timeout to X-Fal-Request-Start-Timeout; clients still send the old one.
    raw = request.headers.get("x-fal-request-start-timeout") or request.headers.get("x-fal-request-timeout")
    if raw is None or not raw.strip():
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return _error(
            [
                {
                    "loc": ["header", "x-fal-request-timeout"],
                    "msg": f"must be a number of seconds, got {raw!r}",
                    "type": "value_error",
                }
            ],
            422,
        )
    # NaN and infinity parse as floats but are no deadline.
    if not math.isfinite(seconds) or seconds <= 0:
        return _error(
            [{"loc": ["header", "x-fal-request-timeout"], "msg": "must be positive and finite", "type": "value_error"}],
            422,
        )
    return seconds


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None past `limit` bytes: read in chunks so an oversized upload never sits in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


#: Bodies above this are parsed and validated in a worker thread rather than on the event loop.
_PARSE_IN_THREAD_BYTES = 64 * 1024
#: json.loads holds the GIL for the whole parse (15 ms for 8 MB): one large parse at a time, so that the event loop
#: waits for at most one of them, not for a queue of them handing the GIL to each other.
_LARGE_PARSE = threading.Lock()


def _parse_large_input(
    body: bytes, schema: type[ReimagineInput]
) -> tuple[dict[str, Any], ReimagineInput] | JSONResponse:
    with _LARGE_PARSE:
        return _parse_input(body, schema)


def _parse_input(body: bytes, schema: type[ReimagineInput]) -> tuple[dict[str, Any], ReimagineInput] | JSONResponse:
    """The JSON object and its validated input, or the 422 answer."""
    # The JS client sends no body at all for an empty input (fal-protocol.md §3.1).
    try:
        raw = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        return _invalid_json(exc.msg)
    except UnicodeDecodeError:
        return _invalid_json("the body is not UTF-8")
    except ValueError:
        # json.loads refuses integers longer than Python's int_max_str_digits (4300) with a plain ValueError.
        return _invalid_json("a number is too long")
    except RecursionError:
        return _invalid_json("nested too deeply")
    if not isinstance(raw, dict):
        return _error([{"loc": ["body"], "msg": "The input must be a JSON object", "type": "dict_type"}], 422)
    try:
        return raw, schema.model_validate(raw)
    except ValidationError as exc:
        return _error(validation_detail(exc), 422)


async def admit(request: Request, settings: Settings, key_id: str) -> Admitted | JSONResponse:
    """Validate a request for `bria/reimagine/3.2`; a JSONResponse is the refusal to send back."""
    state = state_of(request)
    body = await _read_body(request, settings.max_request_bytes)
    if body is None:
        return _error(
            f"Request body too large (max {settings.max_request_bytes} bytes): upload images through the storage API"
            " and pass their URLs",
            413,
        )
    # Parsing and validating a body of megabytes (an inline image) takes milliseconds of CPU: off the event loop,
    # so that one large request never delays every other answer. Small bodies are cheaper parsed in place.
    schema = StrictReimagineInput if settings.strict_inputs else ReimagineInput
    if len(body) > _PARSE_IN_THREAD_BYTES:
        parsed = await asyncio.to_thread(_parse_large_input, body, schema)
    else:
        parsed = _parse_input(body, schema)
    if isinstance(parsed, JSONResponse):
        return parsed
    raw, inputs = parsed
    unknown = sorted(set(raw) - set(ReimagineInput.model_fields))
    if unknown:
        logger.warning("ignoring unknown input fields: %s", ", ".join(unknown))
    if not inputs.truncate_prompt:
        try:
            # Tokenizing is CPU work (the schema caps the prompt's length, not its cost): never on the event loop.
            await asyncio.to_thread(state.check_prompt, inputs)
        except InputError as exc:
            return _error(exc.detail(), 422)

    webhook_url = request.query_params.get("fal_webhook") or None
    if webhook_url is not None:
        try:
            await asyncio.to_thread(state.check_url, webhook_url)
        except InputError as exc:
            return _error([{"loc": ["query", "fal_webhook"], "msg": exc.message, "type": "value_error"}], 422)

    start_timeout = _start_timeout(request)
    if isinstance(start_timeout, JSONResponse):
        return start_timeout
    try:
        options = platform.parse(request.headers, request.query_params)
    except InputError as exc:
        where = "query" if exc.field.startswith("fal_") else "header"
        return _error([{"loc": [where, exc.field], "msg": exc.message, "type": "value_error"}], 422)

    # Limits last, so that a malformed request is told what is wrong with it even when the queue is full.
    retry_after = state.limiter.check(key_id)
    if retry_after is not None:
        return refusal(
            "Rate limit exceeded: too many submissions for this key",
            429,
            ErrorType.RATE_LIMITED,
            {"retry-after": str(max(1, round(retry_after)))},
        )

    return Admitted(
        key_id=key_id,
        # Only the fields the client sent: the worker must tell a left-out `aspect_ratio` from a default one.
        raw=inputs.model_dump(mode="json", exclude_unset=True),
        priority=Priority.from_header(request.headers.get("x-fal-queue-priority")),
        webhook_url=webhook_url,
        start_deadline_at=time.time() + start_timeout if start_timeout is not None else None,
        base_url=base_url(request, settings),
        options=options,
        input_bytes=len(body),
    )


#: Retry-After (s) of the 503 `runner_scheduling_failure`: a worker's restart and model load take tens of seconds
NO_WORKER_RETRY_AFTER = "30"


def queue_full() -> JSONResponse:
    return refusal("The queue is full; try again later", 429, ErrorType.QUEUE_FULL, {"retry-after": "5"})


def new_request_id() -> str:
    return str(uuid.uuid4())


async def submit_job(
    state: AppState, admitted: Admitted, *, is_sync: bool, job_id: str | None = None
) -> tuple[JobState, int] | JSONResponse:
    """Enqueue an admitted request; a 429 answer when a queue is full, a 422 when an `Idempotency-Key` is reused, 503
    when no worker can start (a job queued then would wait forever).

    With an `Idempotency-Key` already used for the same body, the answer is that earlier job, not a new one.
    """
    cause = state.unavailable()
    if cause is not None:
        return refusal(
            f"No worker can run this request: {cause}",
            503,
            ErrorType.RUNNER_SCHEDULING_FAILURE,
            {"retry-after": NO_WORKER_RETRY_AFTER},
        )
    options = admitted.options
    new = NewJob(
        id=job_id or new_request_id(),
        key_id=admitted.key_id,
        endpoint=ENDPOINT_ID,
        input=admitted.raw,
        priority=admitted.priority,
        webhook_url=admitted.webhook_url,
        start_deadline_at=admitted.start_deadline_at,
        is_sync=is_sync,
        base_url=admitted.base_url,
        no_retry=options.no_retry,
        store_io=options.store_io,
        file_ttl_s=options.file_ttl_s,
        input_bytes=admitted.input_bytes,
        max_queue_length=options.max_queue_length,
        idempotency_key=options.idempotency_key,
        body_hash=(
            platform.body_hash(admitted.raw, admitted.webhook_url) if options.idempotency_key is not None else None
        ),
    )
    try:
        job, position = await state.enqueuer.enqueue(new)
    except QueueFull as full:
        if full.per_key:
            return refusal(
                f"This key already has {full.queued} requests waiting (fal_max_queue_length)",
                429,
                ErrorType.QUEUE_FULL,
                {"retry-after": "5"},
            )
        return queue_full()
    except IdempotencyConflict as conflict:
        return _error(
            [{"loc": ["header", platform.IDEMPOTENCY_HEADER], "msg": str(conflict), "type": "value_error"}], 422
        )
    if job.id == new.id:
        state.notify_workers()
        logger.info("request queued", extra={"request_id": job.id, "queue_position": position})
    else:
        logger.info("idempotent replay", extra={"request_id": job.id})
    return job, position
