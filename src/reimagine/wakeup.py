"""A wake-up for a task on an event loop that any thread may send (worker messages, NOTIFY, the loop itself)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Wakeup:
    """An `asyncio.Event` of the loop that `attach`ed it, settable from any thread."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def attach(self) -> asyncio.Event:
        """Called by the waiting task, on its loop: the event to wait on. Until then, and after `detach`, `set` does
        nothing. Each call makes a new event, since an event belongs to the first loop that waits on it."""
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        return self._event

    def detach(self) -> None:
        self._loop = None

    def set(self) -> None:
        loop = self._loop
        if loop is None:
            return
        # On the loop's own thread the event is set directly: the thread-safe path would write to the loop's
        # wake-up pipe and cost it an extra turn.
        if threading.get_ident() == self._loop_thread:
            self._event.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the app is shutting down
            loop.call_soon_threadsafe(self._event.set)
