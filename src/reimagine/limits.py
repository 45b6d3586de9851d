"""Per-key submit rate limit: a token bucket per API key, in this process.

The limit is per API replica: N replicas behind a load balancer admit up to N times `submit_rate_per_min`. That is
deliberate (no shared counter on the submit path); the global guard is `max_queue_depth`, which every replica reads
from the shared store. Only submits are limited: polling status and results never is (fal-protocol.md §3.4, clients
back off on 429 with Retry-After).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from reimagine.config import Settings

__all__ = ["RateLimiter"]

#: Above this many tracked keys, full (idle) buckets are dropped; a full bucket is the same as no bucket.
_PRUNE_AT = 10_000


class RateLimiter:
    """`submit_rate_per_min` submits per key, with bursts up to one minute's worth; 0 disables it."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(settings.submit_rate_per_min)
        self._per_s = self._capacity / 60.0
        self._clock = clock
        # key id -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        # Routes call `check` on the event loop, tests and tools from threads; the critical section is tiny.
        self._lock = threading.Lock()

    def check(self, key_id: str) -> float | None:
        """Take one token for `key_id`: None if admitted, else the seconds until a token is available."""
        if self._capacity <= 0:
            return None
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - then) * self._per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                if len(self._buckets) > _PRUNE_AT:
                    self._prune(now)
                return None
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self._per_s

    def _prune(self, now: float) -> None:
        full = [k for k, (t, then) in self._buckets.items() if t + (now - then) * self._per_s >= self._capacity]
        for key_id in full:
            del self._buckets[key_id]
