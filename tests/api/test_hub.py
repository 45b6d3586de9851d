"""The event hub delivers every committed event once, even when ids commit out of order (PostgreSQL)."""

from __future__ import annotations

import asyncio

from reimagine.api.hub import EventHub
from reimagine.queue.models import Event, EventKind, JobResult


class _Events:
    """The store calls the hub makes, over a list whose visible rows the test controls."""

    reads_inline = True

    def __init__(self) -> None:
        self.visible: list[Event] = []
        #: tails the hub has made (each reads `events_since` at least once)
        self.reads = 0

    def last_event_id(self) -> int:
        return 0

    def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        self.reads += 1
        return sorted((e for e in self.visible if e.id > after_id), key=lambda e: e.id)[:limit]

    def get_result(self, job_id: str) -> JobResult | None:
        return None


def _event(event_id: int, job_id: str = "job") -> Event:
    return Event(id=event_id, job_id=job_id, kind=EventKind.LOG, data={"message": str(event_id)}, created_at=0.0)


async def _receive(queue: asyncio.Queue[Event], count: int) -> list[int]:
    """The next `count` events' ids, as they arrive (a condition, not a fixed wait)."""
    async with asyncio.timeout(10):
        return [(await queue.get()).id for _ in range(count)]


async def _tails(store: _Events, count: int) -> None:
    """Wait until the hub has read the store `count` more times: what it had to deliver, it has."""
    target = store.reads + count
    async with asyncio.timeout(10):
        while store.reads < target:
            await asyncio.sleep(0.001)


def test_out_of_order_commits_are_delivered_once() -> None:
    async def scenario() -> None:
        store = _Events()
        hub = EventHub(store, poll_s=0.01)
        queue = hub.subscribe("job")
        task = asyncio.create_task(hub.run())
        store.visible += [_event(1), _event(3)]  # 2 is still in flight
        assert await _receive(queue, 2) == [1, 3]
        store.visible.append(_event(2))  # the slow transaction commits
        assert await _receive(queue, 1) == [2]
        store.visible.append(_event(4))
        assert await _receive(queue, 1) == [4]
        await _tails(store, 3)
        assert queue.empty(), "each event once"
        task.cancel()

    asyncio.run(scenario())


def test_large_backlogs_arrive_in_order_without_duplicates() -> None:
    async def scenario() -> None:
        store = _Events()
        hub = EventHub(store, poll_s=0.01)
        queue = hub.subscribe("job")
        task = asyncio.create_task(hub.run())
        store.visible += [_event(i) for i in range(1, 2501)]
        assert await _receive(queue, 2500) == list(range(1, 2501))
        await _tails(store, 3)
        assert queue.empty(), "each event once"
        task.cancel()

    asyncio.run(scenario())
