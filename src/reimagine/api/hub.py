"""Fan-out of job events to the API's waiters (status streams, sync runs).

The store's `events` table is the source of truth; the hub tails it and wakes the subscribers of each job. A tail
runs at once when kicked (a local worker wrote something, or PostgreSQL NOTIFY arrived) and at least every
`poll_s` otherwise, so events written by workers anywhere still arrive without any signal.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from reimagine.jobs import TERMINAL
from reimagine.queue.models import Event

logger = logging.getLogger(__name__)

_TERMINAL = {status.value for status in TERMINAL}


class EventHub:
    def __init__(self, store: Any, *, poll_s: float = 0.1, on_terminal: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._on_terminal = on_terminal
        self._poll_s = poll_s
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._kicked = asyncio.Event()
        self._last_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._last_id = await asyncio.to_thread(self._store.last_event_id)
        while True:
            try:
                await asyncio.wait_for(self._kicked.wait(), timeout=self._poll_s)
            except TimeoutError:
                pass
            self._kicked.clear()
            try:
                await self._tail()
            except Exception:
                logger.exception("event tail failed; retrying")
                await asyncio.sleep(self._poll_s)

    async def _tail(self) -> None:
        while True:
            events: list[Event] = await asyncio.to_thread(self._store.events_since, self._last_id)
            for event in events:
                self._last_id = event.id
                for queue in self._subscribers.get(event.job_id, ()):
                    queue.put_nowait(event)
                if self._on_terminal is not None and event.kind == "status" and event.data["status"] in _TERMINAL:
                    self._on_terminal(event.job_id)
            if len(events) < 1000:
                return

    def kick(self) -> None:
        """Tail now; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._kicked.set)
        except RuntimeError:
            # Loop shutting down.
            pass

    def subscribe(self, job_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[Event]) -> None:
        subscribers = self._subscribers.get(job_id)
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self._subscribers[job_id]
