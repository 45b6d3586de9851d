"""Fan-out of job events to the API's waiters (status streams, sync runs).

The store's `events` table is the source of truth; the hub tails it and wakes the subscribers of each job. A tail
runs at once when kicked (a local worker wrote something, or PostgreSQL NOTIFY arrived) and at least every
`poll_s` otherwise, so events written by workers anywhere still arrive without any signal.

Event ids come from a sequence, and on PostgreSQL concurrent transactions can commit out of id order: id 12 may be
visible before id 11. So the tail remembers the ids it skipped over (gaps) and reads from the oldest open gap
until it is filled, or until `_GAP_TTL_S` says the transaction behind it rolled back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Protocol

from reimagine.api.reads import read
from reimagine.jobs import TERMINAL
from reimagine.queue.models import Event, EventKind, JobResult
from reimagine.wakeup import Wakeup

logger = logging.getLogger(__name__)

_TERMINAL = {status.value for status in TERMINAL}
#: a bound on the finished jobs kept for their waiters (each is dropped when its last subscriber leaves)
_FINISHED_KEPT = 256
#: how long a skipped event id may still appear (a slow transaction); after that it was rolled back
_GAP_TTL_S = 10.0
_BATCH = 1000


class _Store(Protocol):
    """The slice of the job store the hub reads."""

    reads_inline: bool

    def last_event_id(self) -> int: ...

    def events_since(self, after_id: int, limit: int = ...) -> list[Event]: ...

    def get_result(self, job_id: str) -> JobResult | None: ...


class EventHub:
    def __init__(
        self, store: _Store, *, poll_s: float = 0.1, on_terminal: Callable[[JobResult], None] | None = None
    ) -> None:
        self._store = store
        self._on_terminal = on_terminal
        self._poll_s = poll_s
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._kicked = Wakeup()
        self._last_id = 0
        self._gaps: dict[int, float] = {}
        self._finished: OrderedDict[str, JobResult] = OrderedDict()

    async def run(self) -> None:
        kicked = self._kicked.attach()
        self._last_id = await asyncio.to_thread(self._store.last_event_id)
        while True:
            try:
                # A timeout scope, not `wait_for`: that wraps the wait in a task of its own on every round.
                async with asyncio.timeout(self._poll_s):
                    await kicked.wait()
            except TimeoutError:
                pass
            kicked.clear()
            try:
                await self._tail()
            except Exception:
                logger.exception("event tail failed; retrying")
                await asyncio.sleep(self._poll_s)

    async def _tail(self) -> None:
        now = asyncio.get_running_loop().time()
        self._gaps = {gap: seen for gap, seen in self._gaps.items() if now - seen < _GAP_TTL_S}
        after = min(self._gaps) - 1 if self._gaps else self._last_id
        while True:
            batch, after, events, finished = await read(self._store, self._read, after, self._last_id, set(self._gaps))
            for event in events:
                if event.id > self._last_id:
                    self._gaps.update((missing, now) for missing in range(self._last_id + 1, event.id))
                    self._last_id = event.id
                else:
                    del self._gaps[event.id]
            for job in finished:
                if job.id in self._subscribers:
                    self._finished[job.id] = job
                    if len(self._finished) > _FINISHED_KEPT:
                        self._finished.popitem(last=False)
            for event in events:
                for queue in self._subscribers.get(event.job_id, ()):
                    queue.put_nowait(event)
            if self._on_terminal is not None:
                for job in finished:
                    self._on_terminal(job)
            if batch < _BATCH:
                return

    def _read(self, after_id: int, last_id: int, gaps: set[int]) -> tuple[int, int, list[Event], list[JobResult]]:
        """Events after `after_id` not delivered yet, and the jobs they finish (read here, once, for all waiters).

        Also returns the raw batch's size and last id, so the caller knows whether and where more rows wait.
        """
        batch: list[Event] = self._store.events_since(after_id, _BATCH)
        events = [event for event in batch if event.id > last_id or event.id in gaps]
        finished = []
        for event in events:
            if event.kind == EventKind.STATUS and event.data["status"] in _TERMINAL:
                job = self._store.get_result(event.job_id)
                if job is not None and job.status.value in _TERMINAL:
                    finished.append(job)
        return len(batch), (batch[-1].id if batch else after_id), events, finished

    def finished(self, job_id: str) -> JobResult | None:
        """The finished job, if the hub read it when it delivered the job's terminal event."""
        return self._finished.get(job_id)

    def kick(self) -> None:
        """Tail now; safe to call from any thread."""
        self._kicked.set()

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
                self._finished.pop(job_id, None)
