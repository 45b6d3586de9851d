"""`Authorization: Key <id>:<secret>` on every API call (fal-protocol.md §2), and what the key may do.

The key check is `AppState.authenticate(key) -> KeyGrant | None` (api/state.py), set by `create_app`. A key has a scope:

- `read`: status, status stream, result, listing;
- `submit`: submit, sync run, cancel, uploads (no reads: a producer that learns results from webhooks);
- `admin`: everything, including deleting requests (the default, and what keys made before scopes are).

A key used outside its scope is 403; an unknown, revoked or expired key is 401.

Revocation takes effect at once: on SQLite every request reads the key (a primary-key read on the event loop, tens
of microseconds); on PostgreSQL answers are cached for `_CACHE_S`, and only while the replica's LISTEN connection
is up, because a revocation on any replica or from `reimagine keys revoke` notifies every listener, which empties
its cache (`reimagine.queue.notify.KEYS`). A lost connection means lost notifications, so the cache is bypassed
until it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from reimagine.api.state import state_of
from reimagine.queue.keys import KeyGrant, Scope

UNKNOWN_KEY = "No user found for Key ID and Secret"
_CACHE_S = 5.0

#: What each scope may do.
_ALLOWED: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.SUBMIT: frozenset({Scope.SUBMIT}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.SUBMIT, Scope.ADMIN}),
}

#: `--no-auth` (a private network behind its own gateway): every caller is the same owner, with every right.
ANONYMOUS = KeyGrant(id="anonymous", name="anonymous", scope=Scope.ADMIN)


async def authorize(request: Request, need: Scope) -> KeyGrant:
    """The request's key if it may do `need`; 401 with fal's body, or 403, otherwise.

    Async, so that FastAPI runs it on the event loop rather than in a worker thread: a cached key or a SQLite read
    costs no thread hop; only a PostgreSQL check goes to a thread.
    """
    authenticate: Callable[[str], KeyGrant | None] = state_of(request).authenticate
    if authenticate is open_access:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "key" or not key:
        raise HTTPException(status_code=401, detail="Missing `Authorization: Key <key>` header")
    grant: KeyGrant | None
    if isinstance(authenticate, KeyCache):
        grant = authenticate.cached(key)
        if grant is None:
            grant = authenticate(key) if authenticate.inline else await asyncio.to_thread(authenticate, key)
    else:
        grant = await asyncio.to_thread(authenticate, key)
    if grant is None:
        raise HTTPException(status_code=401, detail=UNKNOWN_KEY)
    if need not in _ALLOWED[grant.scope]:
        raise HTTPException(status_code=403, detail=f"This key's scope ({grant.scope.value}) does not allow this call")
    return grant


async def require_key(request: Request) -> str:
    """The id of the request's key, whatever its scope (a read)."""
    return (await authorize(request, Scope.READ)).id


async def _read_key(request: Request) -> str:
    return (await authorize(request, Scope.READ)).id


async def _submit_key(request: Request) -> str:
    return (await authorize(request, Scope.SUBMIT)).id


async def _admin_key(request: Request) -> str:
    return (await authorize(request, Scope.ADMIN)).id


#: A key allowed to read (status, result, listing); the value is its id.
ApiKeyDep = Annotated[str, Depends(_read_key)]
#: A key allowed to submit (submit, run, cancel, upload).
SubmitKeyDep = Annotated[str, Depends(_submit_key)]
#: An admin key (delete).
AdminKeyDep = Annotated[str, Depends(_admin_key)]


class KeyCache:
    """Memoises `verify(key)` for `ttl_s` while `is_fresh()` holds; negative answers are never cached.

    `ttl_s` 0 caches nothing (SQLite); `inline` says the verification is cheap enough for the event loop.
    An answer is never kept past the key's own expiry.
    """

    def __init__(
        self,
        verify: Callable[[str], KeyGrant | None],
        ttl_s: float = _CACHE_S,
        *,
        inline: bool = False,
        is_fresh: Callable[[], bool] = lambda: True,
    ) -> None:
        self._verify = verify
        self._ttl_s = ttl_s
        self.inline = inline
        #: whether cached answers may be used now (PostgreSQL: while this replica's LISTEN connection is up)
        self.is_fresh = is_fresh
        self._hits: dict[str, tuple[KeyGrant, float]] = {}
        #: bumped by `clear`: an answer read before a revocation arrived is not cached after it
        self._generation = 0

    def cached(self, key: str) -> KeyGrant | None:
        """The key's grant if a live answer is cached; never touches the database."""
        hit = self._hits.get(key)
        if hit is not None and hit[1] > time.monotonic() and self.is_fresh():
            return hit[0]
        return None

    def clear(self) -> None:
        """Forget every answer (a key was revoked somewhere)."""
        self._hits = {}
        self._generation += 1

    def __call__(self, key: str) -> KeyGrant | None:
        hit = self.cached(key)
        if hit is not None:
            return hit
        generation = self._generation
        grant = self._verify(key)
        if grant is not None and self._ttl_s > 0 and generation == self._generation:
            ttl_s = self._ttl_s
            if grant.expires_at is not None:
                ttl_s = min(ttl_s, grant.expires_at - time.time())
            if len(self._hits) > 10_000:
                self._hits = {}
            self._hits[key] = (grant, time.monotonic() + ttl_s)
        return grant


def open_access(_key: str) -> KeyGrant:
    """`--no-auth`: every caller is the same anonymous owner."""
    return ANONYMOUS
