"""Store reads from the event loop: inline where a read costs microseconds, in a worker thread where it waits.

On SQLite in WAL mode a single-row read takes tens of microseconds and never waits for a writer, while a hop to a
worker thread and back costs several times that (and more under load, when the two threads contend for the GIL):
status polls and the event hub read inline. PostgreSQL reads wait on the network, so they go to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def read(store: Any, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, a read of `store`, run where it is cheapest (see the module docstring)."""
    if getattr(store, "reads_inline", False):
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
