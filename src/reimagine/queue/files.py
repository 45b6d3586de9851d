"""Files of jobs and uploads: their rows in the store (the bytes are in `reimagine.storage`), and their expiry.

`Files` is part of `JobStore` (`store.py`); `record_file` also runs inside `JobStore.complete`'s transaction.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from reimagine.queue.db import Conn, Database
from reimagine.queue.models import FileRow

_FILE_EXISTS = sa.text("SELECT 1 FROM files WHERE key = :key")
_INSERT_FILE = sa.text(
    "INSERT INTO files (key, job_id, kind, content_type, size, created_at, expires_at, key_id)"
    " VALUES (:key, :job_id, :kind, :ct, :size, :now, :expires_at, :key_id)"
)
_FILE_EXPIRY = sa.text("SELECT expires_at FROM files WHERE key = :key")
_EXPIRED_FILES = sa.text(
    "SELECT key FROM files WHERE expires_at IS NOT NULL AND expires_at <= :now ORDER BY expires_at LIMIT :n"
)
_JOB_FILE_TTL = sa.text("SELECT file_ttl_s FROM jobs WHERE id = :id")


class Files:
    db: Database
    clock: Callable[[], float]

    def add_file(self, key: str, *, job_id: str | None, kind: str, content_type: str, size: int) -> None:
        """Record a file of a job (a preview, a map); it expires with the job's lifecycle, if it has one."""
        with self.db.write() as conn:
            ttl_s = conn.first(_JOB_FILE_TTL, {"id": job_id}) if job_id is not None else None
            now = self.clock()
            record_file(conn, FileRow(key, kind, content_type, size), job_id, now, ttl_s=ttl_s[0] if ttl_s else None)

    def add_upload(self, key: str, *, key_id: str, content_type: str, ttl_s: float) -> None:
        """Record an upload that expires `ttl_s` from now (`X-Fal-Object-Lifecycle`); uploads without one are
        not recorded (they follow the retention)."""
        with self.db.write() as conn:
            record_file(conn, FileRow(key, "upload", content_type, 0), None, self.clock(), ttl_s=ttl_s, key_id=key_id)

    def file_expiry(self, key: str) -> float | None:
        """When the file stops being served; None if it has no expiry of its own (or is unknown)."""
        with self.db.read() as conn:
            row = conn.first(_FILE_EXPIRY, {"key": key})
        return None if row is None or row[0] is None else float(row[0])

    def expire_files(self, *, batch: int = 500) -> list[str]:
        """Forget files whose lifecycle ended; returns their keys, for the caller to delete from storage."""
        with self.db.write() as conn:
            keys = [row[0] for row in conn.rows(_EXPIRED_FILES, {"now": self.clock(), "n": batch})]
            if keys:
                chosen = {f"f{n}": key for n, key in enumerate(keys)}
                among = ", ".join(f":{name}" for name in chosen)
                conn.changed(sa.text(f"DELETE FROM files WHERE key IN ({among})"), chosen)
        return keys


def record_file(
    conn: Conn,
    file: FileRow,
    job_id: str | None,
    now: float,
    *,
    ttl_s: float | None = None,
    key_id: str | None = None,
) -> None:
    if conn.first(_FILE_EXISTS, {"key": file.key}) is None:
        params = {"key": file.key, "job_id": job_id, "kind": file.kind, "ct": file.content_type, "size": file.size}
        expires_at = now + ttl_s if ttl_s is not None else None
        conn.changed(_INSERT_FILE, {**params, "now": now, "expires_at": expires_at, "key_id": key_id})
