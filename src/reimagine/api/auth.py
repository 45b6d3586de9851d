"""`Authorization: Key <id>:<secret>` on every API call (fal-protocol.md §2).

The key check is `app.state.authenticate(key) -> key_id | None`, set by `create_app`; results are cached for a few
seconds so that 10 status polls a second per client do not each hit the database (a revoked key stops working
within `_CACHE_S`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

UNKNOWN_KEY = "No user found for Key ID and Secret"
_CACHE_S = 5.0


async def require_key(request: Request) -> str:
    """The id of the request's API key; 401 with fal's body otherwise.

    Async, so that FastAPI runs it on the event loop rather than in a worker thread: a cached key (the usual case)
    costs no thread hop; only a database check goes to a thread.
    """
    authenticate: Callable[[str], str | None] = request.app.state.authenticate
    if authenticate is open_access:
        # `--no-auth` (a private network behind its own gateway): every caller is the same owner.
        return open_access("")
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "key" or not key:
        raise HTTPException(status_code=401, detail="Missing `Authorization: Key <key>` header")
    if isinstance(authenticate, KeyCache):
        key_id: str | None = authenticate.cached(key) or await asyncio.to_thread(authenticate, key)
    else:
        key_id = await asyncio.to_thread(authenticate, key)
    if key_id is None:
        raise HTTPException(status_code=401, detail=UNKNOWN_KEY)
    return key_id


ApiKeyDep = Annotated[str, Depends(require_key)]


class KeyCache:
    """Memoises `verify(key)` for `ttl_s`; negative answers are not cached so a new key works at once."""

    def __init__(self, verify: Callable[[str], str | None], ttl_s: float = _CACHE_S) -> None:
        self._verify = verify
        self._ttl_s = ttl_s
        self._hits: dict[str, tuple[str, float]] = {}

    def cached(self, key: str) -> str | None:
        """The key's id if a live answer is cached; never touches the database."""
        hit = self._hits.get(key)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def __call__(self, key: str) -> str | None:
        now = time.monotonic()
        hit = self._hits.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        key_id = self._verify(key)
        if key_id is not None:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[key] = (key_id, now + self._ttl_s)
        return key_id


def open_access(_key: str) -> str:
    """`--no-auth`: every caller is the same anonymous owner."""
    return "anonymous"
