"""Submissions reach the store in batches: the ones that arrive while a write is under way go in the next one.

Each submission used to be its own write transaction from its own worker thread; under load the API's threads then
queued behind one another for the database's single write lock, each paying for its own commit. Here one write is in
flight at a time and carries everything that arrived meanwhile, so a lone request is written at once (a batch of
one) and a burst costs a few transactions instead of one per request.

On SQLite the write is made on the event loop itself when no other writer holds the lock (the usual case: it takes
a fraction of a millisecond, less than the hop to a thread and back); only a write that would wait goes to a thread.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from reimagine.queue.models import IdempotencyConflict, JobState, NewJob, QueueFull

#: Jobs per transaction: bounds how long one write holds the lock (the workers write between batches).
_MAX_BATCH = 64


_Result = tuple[JobState, int] | QueueFull | IdempotencyConflict


class _Store(Protocol):
    """The slice of the job store the enqueuer writes with (`queue/submit.py`)."""

    def enqueue_many(self, news: list[NewJob], *, max_queued: int | None = ...) -> list[_Result]: ...

    def try_enqueue_many(self, news: list[NewJob], *, max_queued: int | None = ...) -> list[_Result] | None: ...


class Enqueuer:
    def __init__(self, store: _Store, *, max_queued: int | None) -> None:
        self._store = store
        self._max_queued = max_queued
        self._pending: list[tuple[NewJob, asyncio.Future[tuple[JobState, int]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def enqueue(self, new: NewJob) -> tuple[JobState, int]:
        """The queued job and its position; raises `QueueFull` or `IdempotencyConflict` like `store.enqueue`."""
        future: asyncio.Future[tuple[JobState, int]] = asyncio.get_running_loop().create_future()
        self._pending.append((new, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="enqueue")
        # Shielded: a caller that goes away does not take the batch (and the others' answers) with it.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                news = [new for new, _ in batch]
                try:
                    results = self._store.try_enqueue_many(news, max_queued=self._max_queued)
                    if results is None:
                        results = await asyncio.to_thread(self._store.enqueue_many, news, max_queued=self._max_queued)
                except Exception as exc:  # the store is down: every caller of this batch gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, (QueueFull, IdempotencyConflict)):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None
