"""API keys: `<id>:<secret>`, of which the store keeps only a hash of the secret.

`reimagine keys create|list|revoke` manage them; the API verifies each request's key through a short cache
(`api/auth.py`), so a revoked key stops working within that cache's lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

import sqlalchemy as sa

from reimagine.queue.db import Database
from reimagine.queue.models import ApiKey

_INSERT = sa.text("INSERT INTO api_keys (id, name, secret_hash, created_at) VALUES (:id, :name, :hash, :now)")
_HASH = sa.text("SELECT secret_hash FROM api_keys WHERE id = :id AND revoked_at IS NULL")
_LIST = sa.text("SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at")
_REVOKE = sa.text("UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL")
_COUNT = sa.text("SELECT COUNT(*) FROM api_keys")


def _hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a fast hash is enough; a slow KDF would only slow every request.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def create(self, name: str) -> str:
        """Create a key; returns `<id>:<secret>`, the only time the secret exists in clear."""
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        with self._db.write() as conn:
            conn.changed(_INSERT, {"id": key_id, "name": name, "hash": _hash_secret(secret), "now": self._clock()})
        return f"{key_id}:{secret}"

    def verify(self, key: str) -> str | None:
        """The key's id if `key` is a live `<id>:<secret>`, else None."""
        key_id, _, secret = key.partition(":")
        if not key_id or not secret:
            return None
        with self._db.read() as conn:
            row = conn.first(_HASH, {"id": key_id})
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            return None
        return key_id

    def all(self) -> list[ApiKey]:
        with self._db.read() as conn:
            return [ApiKey(r[0], r[1], r[2], r[3]) for r in conn.rows(_LIST)]

    def revoke(self, key_id: str) -> bool:
        with self._db.write() as conn:
            return conn.changed(_REVOKE, {"now": self._clock(), "id": key_id}) == 1

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.scalar(_COUNT))
