"""Usage per API key and UTC day: images, failures, GPU seconds of denoising, input and output bytes.

A job's usage is added in the transaction that finishes it (`transitions.finish`), so the totals can never count a
job twice nor miss one. Each key and day has `SHARDS` rows, one picked by the job's id, that readers sum: with a
single row, concurrent completions of one key waited for each other's commit on PostgreSQL (migration 0006). This
is what a team running one server for many users charges back or caps with.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from reimagine.queue.db import Conn, Database

#: Rows per key and day.
SHARDS = 16
_ADD = sa.text(
    "INSERT INTO usage (key_id, day, shard, images, failed, gpu_s, input_bytes, output_bytes)"
    " VALUES (:key_id, :day, :shard, :images, :failed, :gpu_s, :input_bytes, :output_bytes)"
    " ON CONFLICT (key_id, day, shard) DO UPDATE SET images = usage.images + excluded.images,"
    " failed = usage.failed + excluded.failed, gpu_s = usage.gpu_s + excluded.gpu_s,"
    " input_bytes = usage.input_bytes + excluded.input_bytes, output_bytes = usage.output_bytes + excluded.output_bytes"
)
_ROWS = (
    "SELECT u.key_id, COALESCE(k.name, u.key_id), u.day, SUM(u.images), SUM(u.failed), SUM(u.gpu_s),"
    " SUM(u.input_bytes), SUM(u.output_bytes) FROM usage u LEFT JOIN api_keys k ON k.id = u.key_id"
    " WHERE u.day >= :since{key} GROUP BY u.key_id, k.name, u.day ORDER BY u.day, u.key_id"
)
_TOTALS = sa.text(
    "SELECT u.key_id, COALESCE(k.name, u.key_id), SUM(u.images), SUM(u.failed), SUM(u.gpu_s), SUM(u.input_bytes),"
    " SUM(u.output_bytes) FROM usage u LEFT JOIN api_keys k ON k.id = u.key_id GROUP BY u.key_id, k.name"
)


@dataclass(frozen=True)
class UsageRow:
    key_id: str
    key_name: str
    #: `YYYY-MM-DD` (UTC); "" for totals over every day
    day: str
    images: int
    failed: int
    gpu_s: float
    input_bytes: int
    output_bytes: int


def day_of(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def add(
    conn: Conn,
    key_id: str,
    job_id: str,
    now: float,
    *,
    succeeded: bool,
    gpu_s: float | None,
    input_bytes: int,
    output_bytes: int | None,
) -> None:
    """Count one finished job (in the caller's transaction)."""
    conn.changed(
        _ADD,
        {
            "key_id": key_id,
            "day": day_of(now),
            "shard": zlib.crc32(job_id.encode()) % SHARDS,
            "images": 1 if succeeded else 0,
            "failed": 0 if succeeded else 1,
            "gpu_s": gpu_s or 0.0,
            "input_bytes": input_bytes,
            "output_bytes": output_bytes or 0,
        },
    )


class Usage:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def rows(self, *, key: str | None = None, since: str = "") -> list[UsageRow]:
        """Per key and day from `since` (`YYYY-MM-DD`), oldest first; `key` is a key's id or name."""
        params: dict[str, object] = {"since": since}
        where = ""
        if key is not None:
            where = " AND (u.key_id = :key OR k.name = :key)"
            params["key"] = key
        with self._db.read() as conn:
            found = conn.rows(sa.text(_ROWS.format(key=where)), params)
        return [_row(r) for r in found]

    def totals(self) -> list[UsageRow]:
        """Per key over every day: what `/metrics` exports."""
        with self._db.read() as conn:
            found = conn.rows(_TOTALS)
        return [UsageRow(r[0], r[1], "", int(r[2]), int(r[3]), float(r[4]), int(r[5]), int(r[6])) for r in found]


def _row(r: object) -> UsageRow:
    values = list(r)  # type: ignore[call-overload]
    return UsageRow(
        values[0],
        values[1],
        values[2],
        int(values[3]),
        int(values[4]),
        float(values[5]),
        int(values[6]),
        int(values[7]),
    )
