"""The API process's background loops: lease reaper, start deadlines, SQLite checkpoints, retention sweeps.

Each runs as a task of the app's lifespan (`api/app.py`), does its store and storage calls in threads, and logs
and retries on failure: a loop that died would silently stop reclaiming jobs or freeing disk.
"""

from __future__ import annotations

import asyncio
import logging
import time

from reimagine.config import Settings
from reimagine.queue.store import JobStore
from reimagine.storage import Storage

logger = logging.getLogger(__name__)


async def reap(store: JobStore, settings: Settings) -> None:
    """Take back jobs whose worker stopped renewing its lease (crashed, hung, partitioned)."""
    next_reclaim = 0.0
    while True:
        await asyncio.sleep(1.0)
        try:
            # Start deadlines are checked every second: a busy worker pool must not delay a user's 504.
            await asyncio.to_thread(store.expire_start_deadlines)
            if time.monotonic() >= next_reclaim:
                await asyncio.to_thread(store.reclaim, expired_before=time.time())
                next_reclaim = time.monotonic() + settings.lease_s / 3
        except Exception:
            logger.exception("lease reaper failed; retrying")


async def checkpoint(store: JobStore) -> None:
    """SQLite: fold the write-ahead log back into the database file often, from a thread of its own.

    A checkpoint syncs the disk (milliseconds on a cloud volume). Left to SQLite, it runs inside whichever commit
    crosses the log's size limit, and the request behind that commit waits: every forty-odd jobs, one took several
    milliseconds longer. Checkpoints made here keep the log below that limit, so no request pays for one.
    """
    while True:
        await asyncio.sleep(0.25)
        try:
            await asyncio.to_thread(store.checkpoint)
        except Exception:
            logger.exception("checkpoint failed; retrying")


async def expire_files(store: JobStore, storage: Storage, every_s: float = 30.0) -> None:
    """Delete files whose own lifecycle ended (`X-Fal-Object-Lifecycle-Preference`); until then they answer 410."""
    while True:
        try:
            while keys := await asyncio.to_thread(store.expire_files):
                for key in keys:
                    await asyncio.to_thread(storage.delete, key)
        except Exception:
            logger.exception("file lifecycle sweep failed; retrying")
        await asyncio.sleep(every_s)


async def sweep(store: JobStore, storage: Storage, settings: Settings) -> None:
    """Delete finished jobs and their files after the retention period."""
    while True:
        try:
            keys = await asyncio.to_thread(store.delete_expired, time.time() - settings.result_retention_s)
            for key in keys:
                await asyncio.to_thread(storage.delete, key)
            # Uploads belong to no job; they expire by age alone.
            await asyncio.to_thread(storage.delete_older_than, settings.result_retention_s)
        except Exception:
            logger.exception("retention sweep failed; retrying")
        await asyncio.sleep(3600)
