"""The event hub delivers every committed event once, even when ids commit out of order (PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

from reimagine.api.hub import EventHub
from reimagine.queue.models import Event


class _Events:
    """The two store calls the hub makes, over a list whose visible rows the test controls."""

    def __init__(self) -> None:
        self.visible: list[Event] = []

    def last_event_id(self) -> int:
        return 0

    def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        return sorted((e for e in self.visible if e.id > after_id), key=lambda e: e.id)[:limit]

    def get(self, job_id: str) -> Any:
        return None


def _event(event_id: int, job_id: str = "job") -> Event:
    return Event(id=event_id, job_id=job_id, kind="log", data={"message": str(event_id)}, created_at=0.0)


async def _drain(queue: asyncio.Queue[Event]) -> list[int]:
    ids = []
    while not queue.empty():
        ids.append(queue.get_nowait().id)
    return ids


def test_out_of_order_commits_are_delivered_once() -> None:
    async def scenario() -> None:
        store = _Events()
        hub = EventHub(store, poll_s=0.01)
        queue = hub.subscribe("job")
        task = asyncio.create_task(hub.run())
        await asyncio.sleep(0.05)
        store.visible += [_event(1), _event(3)]  # 2 is still in flight
        await asyncio.sleep(0.05)
        assert await _drain(queue) == [1, 3]
        store.visible.append(_event(2))  # the slow transaction commits
        await asyncio.sleep(0.05)
        assert await _drain(queue) == [2]
        store.visible.append(_event(4))
        await asyncio.sleep(0.05)
        assert await _drain(queue) == [4]
        task.cancel()

    asyncio.run(scenario())


def test_large_backlogs_arrive_in_order_without_duplicates() -> None:
    async def scenario() -> None:
        store = _Events()
        hub = EventHub(store, poll_s=0.01)
        queue = hub.subscribe("job")
        task = asyncio.create_task(hub.run())
        await asyncio.sleep(0.05)
        store.visible += [_event(i) for i in range(1, 2501)]
        await asyncio.sleep(0.2)
        assert await _drain(queue) == list(range(1, 2501))
        task.cancel()

    asyncio.run(scenario())
