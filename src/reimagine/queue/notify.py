"""PostgreSQL LISTEN/NOTIFY: instant wake-ups across machines; polling stays the source of truth.

The store sends `pg_notify('reimagine_events', <job id>)` with every event it writes (status changes, progress,
logs, cancel requests), and also the payload `QUEUED` whenever a job becomes claimable. A `Listener` holds one
dedicated connection doing LISTEN and calls back on each notification: API replicas tail their event hub at once
(status streams show progress of jobs run anywhere), idle workers claim at once instead of polling.

Notifications are a hint, never the record: they are lost while a listener reconnects, so after every
(re)connect the callback gets `QUEUED` once and the caller re-reads the store. SQLite has no NOTIFY; there the
listener does nothing and callers keep polling (all processes of one machine, where polling is cheap).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

CHANNEL = "reimagine_events"
#: payload sent when a job becomes claimable (enqueued, re-queued); job ids are UUIDs, so it cannot collide
QUEUED = "QUEUED"
#: payload sent when an API key is revoked: every API replica empties its key cache
KEYS = "KEYS"

_RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def is_postgres(database_url: str) -> bool:
    return database_url.startswith(("postgresql:", "postgres:", "postgresql+psycopg:"))


def _libpq_url(database_url: str) -> str:
    # SQLAlchemy's driver suffix means nothing to libpq.
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


class Listener:
    """A daemon thread doing LISTEN on `reimagine_events`; `on_notify(payload)` runs in that thread."""

    def __init__(self, database_url: str, on_notify: Callable[[str], None], *, poll_s: float = 0.5) -> None:
        self._url = _libpq_url(database_url)
        self._on_notify = on_notify
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set while a LISTEN connection is up: callers may then wait longer between polls
        self.connected = threading.Event()

    @property
    def is_live(self) -> bool:
        return self.connected.is_set()

    def start(self) -> Listener:
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._listen()
                failures = 0
            except Exception as exc:
                self.connected.clear()
                delay = _RECONNECT_BACKOFF_S[min(failures, len(_RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                logger.warning("LISTEN %s failed (%s); reconnecting in %.1fs", CHANNEL, exc, delay)
                self._stop.wait(delay)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.connected.set()
            # Anything sent while we were not listening is lost: have the caller look at the store once, and forget
            # the keys it cached (a revocation may have been among what was lost).
            self._call(QUEUED)
            self._call(KEYS)
            while not self._stop.is_set():
                # Returns after `poll_s` without notifications, so `stop()` is seen promptly; a dead server
                # raises here and `_run` reconnects.
                for notify in conn.notifies(timeout=self._poll_s):
                    self._call(notify.payload)
                    if self._stop.is_set():
                        break
        self.connected.clear()

    def _call(self, payload: str) -> None:
        try:
            self._on_notify(payload)
        except Exception:
            logger.exception("notification callback failed")


class NoListener:
    """SQLite: nothing to listen to; callers poll."""

    is_live = False

    def start(self) -> NoListener:
        return self

    def stop(self) -> None:
        return None


def open_listener(database_url: str, on_notify: Callable[[str], None]) -> Listener | NoListener:
    """A started listener for PostgreSQL URLs, a no-op for SQLite."""
    if is_postgres(database_url):
        return Listener(database_url, on_notify).start()
    return NoListener()
