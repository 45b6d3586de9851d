"""Store reads from the event loop: inline where a read costs microseconds, in a worker thread where it waits.

On SQLite in WAL mode a single-row read takes tens of microseconds and never waits for a writer, while a hop to a
worker thread and back costs several times that (and more under load, when the two threads contend for the GIL):
status polls and the event hub read inline. PostgreSQL reads wait on the network, so they go to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class _Store(Protocol):
    #: reads cost microseconds and never wait (SQLite in WAL mode)
    reads_inline: bool


async def read(store: _Store, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)`, a read of `store`, run where it is cheapest (see the module docstring)."""
    if store.reads_inline:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
