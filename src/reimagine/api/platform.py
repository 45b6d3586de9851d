"""fal's platform headers and query parameters on a submit or a run (fal-protocol.md §3.1; fal's "Platform Headers").

Each is parsed here, once, into plain values; a malformed one is a 422 naming it, like a bad input field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, QueryParams

from reimagine.errors import InputError

LIFECYCLE_HEADER = "x-fal-object-lifecycle-preference"
#: fal's upload calls send the same JSON under this name (fal-protocol.md §8).
UPLOAD_LIFECYCLE_HEADERS = ("x-fal-object-lifecycle-preference", "x-fal-object-lifecycle")
IDEMPOTENCY_HEADER = "idempotency-key"
#: `Idempotency-Key` values are the caller's; anything longer than this is not a key but a mistake.
_MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True)
class PlatformOptions:
    #: `X-Fal-No-Retry`: a worker death fails the job (`runner_disconnected`) instead of re-running it
    no_retry: bool = False
    #: `X-Fal-Store-IO: 0`: the stored input is erased once the job finishes
    store_io: bool = True
    #: `X-Fal-Object-Lifecycle-Preference`: the job's files expire this long after they are written
    file_ttl_s: float | None = None
    #: `Idempotency-Key`
    idempotency_key: str | None = None
    #: `fal_max_queue_length`: refuse (429) when the key already has this many requests waiting
    max_queue_length: int | None = None


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _store_io(value: str | None) -> bool:
    # fal documents `X-Fal-Store-IO: 0`; anything else keeps the default (stored).
    return (value or "").strip().lower() not in ("0", "false", "no")


def lifecycle_ttl_s(raw: str | None, header: str = LIFECYCLE_HEADER) -> float | None:
    """`{"expiration_duration_seconds": N}` -> N; None when absent or when N is absent (the server's default)."""
    if raw is None or not raw.strip():
        return None
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        raise InputError(header, 'must be JSON like {"expiration_duration_seconds": 3600}') from None
    if not isinstance(value, dict):
        raise InputError(header, "must be a JSON object")
    seconds = value.get("expiration_duration_seconds")
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise InputError(header, f"`expiration_duration_seconds` must be a positive number, got {seconds!r}")
    return float(seconds)


def parse(headers: Headers, query: QueryParams) -> PlatformOptions:
    """The platform options of a submit or run; raises `InputError` naming the header or parameter."""
    idempotency_key = headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > _MAX_IDEMPOTENCY_KEY:
            raise InputError(IDEMPOTENCY_HEADER, f"must be 1 to {_MAX_IDEMPOTENCY_KEY} characters")
    max_queue_length: int | None = None
    raw_max = query.get("fal_max_queue_length")
    if raw_max is not None and raw_max.strip():
        try:
            max_queue_length = int(raw_max)
        except ValueError:
            raise InputError("fal_max_queue_length", f"must be a whole number, got {raw_max!r}") from None
        if max_queue_length < 0:
            raise InputError("fal_max_queue_length", f"must be 0 or more, got {max_queue_length}")
    return PlatformOptions(
        no_retry=_flag(headers.get("x-fal-no-retry")),
        store_io=_store_io(headers.get("x-fal-store-io")),
        file_ttl_s=lifecycle_ttl_s(headers.get(LIFECYCLE_HEADER)),
        idempotency_key=idempotency_key,
        max_queue_length=max_queue_length,
    )


def body_hash(raw_input: dict[str, Any], webhook_url: str | None) -> str:
    """What makes two submissions "the same request" for `Idempotency-Key`: the validated input and the webhook.

    Queue submit and sync run share it: a run retried with the key joins the job a submit made, and back.
    """
    canonical = json.dumps([raw_input, webhook_url], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
