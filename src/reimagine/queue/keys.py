"""API keys: `<id>:<secret>`, of which the store keeps only a hash of the secret.

`reimagine keys create|list|revoke` manage them. A key has a scope (`Scope`), maybe an expiry and maybe a limit on
how many of its jobs run at once (`max_concurrent`, read by the claim in `transitions.py`). A revocation notifies
every API replica on PostgreSQL (`notify.KEYS`), which empties its key cache (`api/auth.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from reimagine.queue.db import Database
from reimagine.queue.notify import KEYS


class Scope(StrEnum):
    """What an API key may do (`api/auth.py` maps calls to scopes)."""

    #: status, status stream, result, listing
    READ = "read"
    #: submit, run, cancel, uploads
    SUBMIT = "submit"
    #: everything, including deleting requests
    ADMIN = "admin"


@dataclass(frozen=True)
class KeyGrant:
    """A verified key: who it is and what it may do."""

    id: str
    name: str
    scope: Scope
    expires_at: float | None = None


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    revoked_at: float | None = None
    scope: Scope = Scope.ADMIN
    expires_at: float | None = None
    max_concurrent: int | None = None


_INSERT = sa.text(
    "INSERT INTO api_keys (id, name, secret_hash, created_at, scope, expires_at, max_concurrent)"
    " VALUES (:id, :name, :hash, :now, :scope, :expires_at, :max_concurrent)"
)
_GRANT = sa.text("SELECT secret_hash, name, scope, expires_at FROM api_keys WHERE id = :id AND revoked_at IS NULL")
_LIST = sa.text(
    "SELECT id, name, created_at, revoked_at, scope, expires_at, max_concurrent FROM api_keys ORDER BY created_at"
)
_REVOKE = sa.text("UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL")
_COUNT = sa.text("SELECT COUNT(*) FROM api_keys")


def _hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough; a slow KDF would only slow every request.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def create(
        self,
        name: str,
        *,
        scope: Scope = Scope.ADMIN,
        expires_at: float | None = None,
        max_concurrent: int | None = None,
    ) -> str:
        """Create a key; returns `<id>:<secret>`, the only time the secret exists in clear."""
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"`max_concurrent` must be at least 1, got {max_concurrent}")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        params = {
            "id": key_id,
            "name": name,
            "hash": _hash_secret(secret),
            "now": self._clock(),
            "scope": Scope(scope).value,
            "expires_at": expires_at,
            "max_concurrent": max_concurrent,
        }
        with self._db.write() as conn:
            conn.changed(_INSERT, params)
        return f"{key_id}:{secret}"

    def verify(self, key: str) -> KeyGrant | None:
        """What `key` may do, if it is a live `<id>:<secret>` (not revoked, not expired); else None."""
        key_id, _, secret = key.partition(":")
        if not key_id or not secret:
            return None
        with self._db.read() as conn:
            row = conn.first(_GRANT, {"id": key_id})
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            return None
        expires_at = row[3]
        if expires_at is not None and expires_at <= self._clock():
            return None
        return KeyGrant(id=key_id, name=row[1], scope=Scope(row[2]), expires_at=expires_at)

    def all(self) -> list[ApiKey]:
        with self._db.read() as conn:
            return [ApiKey(r[0], r[1], r[2], r[3], Scope(r[4]), r[5], r[6]) for r in conn.rows(_LIST)]

    def revoke(self, key_id: str) -> bool:
        with self._db.write() as conn:
            revoked = conn.changed(_REVOKE, {"now": self._clock(), "id": key_id}) == 1
            if revoked:
                conn.notify(KEYS)
            return revoked

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.scalar(_COUNT))
