"""Submissions are written in batches: every caller still gets its own job, position or refusal."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reimagine.api.enqueuer import Enqueuer
from reimagine.queue import JobStore, open_store
from reimagine.queue.models import NewJob, QueueFull
from tests.api.conftest import database_url
from tests.conftest import new_job


class _Recorded:
    """The real store, with a record of the batches it was given (and a switch to fail them)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.batches: list[int] = []
        self.fail = False
        #: batches written on the event loop (`try_enqueue_many`), not in a thread
        self.inline = 0

    def enqueue_many(self, news: list[NewJob], *, max_queued: int | None) -> Any:
        self.batches.append(len(news))
        if self.fail:
            raise RuntimeError("store down")
        return self.store.enqueue_many(news, max_queued=max_queued)

    def try_enqueue_many(self, news: list[NewJob], *, max_queued: int | None) -> Any:
        if self.fail:
            self.batches.append(len(news))
            raise RuntimeError("store down")
        result = self.store.try_enqueue_many(news, max_queued=max_queued)
        if result is not None:
            self.batches.append(len(news))
            self.inline += 1
        return result


@pytest.fixture
def store(tmp_path: Path, store_flags: list[str]) -> Iterator[_Recorded]:
    recorded = _Recorded(open_store(database_url(tmp_path, store_flags)))
    yield recorded
    recorded.store.close()


def test_a_burst_shares_transactions_and_keeps_its_order(store: _Recorded) -> None:
    async def burst() -> list[tuple[Any, int]]:
        enqueuer = Enqueuer(store, max_queued=None)
        return await asyncio.gather(*(enqueuer.enqueue(new_job()) for _ in range(20)))

    results = asyncio.run(burst())
    assert [position for _, position in results] == list(range(20))
    assert len({job.id for job, _ in results}) == 20
    assert sum(store.batches) == 20 and len(store.batches) < 20, store.batches
    assert store.store.count_queued() == 20


def test_a_lone_submission_is_written_at_once(store: _Recorded) -> None:
    async def one() -> tuple[Any, int]:
        return await Enqueuer(store, max_queued=None).enqueue(new_job())

    job, position = asyncio.run(one())
    assert position == 0 and store.batches == [1]
    assert store.store.get(job.id) is not None


def test_a_full_queue_refuses_only_the_jobs_past_its_depth(store: _Recorded) -> None:
    async def burst() -> list[Any]:
        enqueuer = Enqueuer(store, max_queued=5)
        return await asyncio.gather(*(enqueuer.enqueue(new_job()) for _ in range(8)), return_exceptions=True)

    results = asyncio.run(burst())
    assert [isinstance(r, QueueFull) for r in results] == [False] * 5 + [True] * 3
    assert store.store.count_queued() == 5


def test_a_store_error_reaches_every_caller_of_the_batch_and_the_next_batch_works(store: _Recorded) -> None:
    async def run() -> tuple[list[Any], tuple[Any, int]]:
        enqueuer = Enqueuer(store, max_queued=None)
        store.fail = True
        failed = await asyncio.gather(*(enqueuer.enqueue(new_job()) for _ in range(3)), return_exceptions=True)
        store.fail = False
        return failed, await enqueuer.enqueue(new_job())

    failed, (job, _) = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert store.store.get(job.id) is not None and store.store.count_queued() == 1


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[_Recorded]:
    """Only SQLite writes on the event loop (PostgreSQL always waits on the network, in a thread)."""
    recorded = _Recorded(open_store(f"sqlite:///{tmp_path / 'loop.db'}"))
    yield recorded
    recorded.store.close()


def test_a_busy_write_lock_is_waited_for_in_a_thread_not_on_the_event_loop(sqlite_store: _Recorded) -> None:
    store = sqlite_store
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with store.store.db.write():
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(5)

    async def run() -> tuple[tuple[Any, int], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        asyncio.get_running_loop().call_later(0.4, release.set)
        result = await Enqueuer(store, max_queued=None).enqueue(new_job())
        ticker.cancel()
        return result, ticks

    (job, _), ticks = asyncio.run(run())
    holder.join()
    # The loop kept running while the submission waited (about 40 ticks), and the job was written afterwards.
    assert ticks >= 10, ticks
    assert store.inline == 0 and store.batches == [1]
    assert store.store.get(job.id) is not None


def test_a_free_write_lock_is_taken_on_the_event_loop(sqlite_store: _Recorded) -> None:
    store = sqlite_store

    async def one() -> tuple[Any, int]:
        return await Enqueuer(store, max_queued=None).enqueue(new_job())

    job, _ = asyncio.run(one())
    assert store.inline == 1 and store.store.get(job.id) is not None
