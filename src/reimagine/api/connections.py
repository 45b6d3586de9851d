"""Connection hygiene for `serve`: read timeouts, a connection cap and the descriptor limit.

uvicorn closes a keep-alive connection that idles between requests, but not one that never finishes its request:
3,000 connections that sent nothing (or half a header) stayed open, and with a 1,024-descriptor limit 1,100 of
them took the API down. `guarded_http_protocol` is uvicorn's httptools protocol with
- a header deadline: a request's headers must be complete within `header_timeout_s` of the connection (or of the
  request's first byte on a kept-alive connection); dripping bytes does not extend it;
- a body timeout: a request body that makes no progress for `body_timeout_s` ends the connection (while the
  server itself has paused reading, the client is not to blame and the clock waits);
- a cap: past `max_connections` open connections, a new one is closed at once, before it costs more than a
  descriptor for a moment.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

#: Descriptors kept for everything but client connections: the database, files being served, worker pipes, logs.
RESERVED_DESCRIPTORS = 256
#: The soft descriptor limit asked for at start-up (never above the hard limit).
WANTED_DESCRIPTORS = 65_536


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit where the OS allows; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANTED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the descriptor limit from %d to %d: %s", soft, wanted, exc)
    return WANTED_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int, descriptor_limit: int) -> int:
    """The connection cap in force: the setting, lowered to what the descriptor limit leaves for clients."""
    return max(1, min(max_connections, descriptor_limit - RESERVED_DESCRIPTORS))


def guarded_http_protocol(*, header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type[Any]:
    """uvicorn's `HttpToolsProtocol` with the deadlines and the cap described in the module docstring."""

    refused_log = _Throttled(10.0)

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                refused_log.warning("over %d open connections: closing new ones", max_connections)
                transport.abort()
                return
            self._arm(header_timeout_s, self._headers_overdue)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # the first byte of a later request on a kept-alive connection
                self._arm(header_timeout_s, self._headers_overdue)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(body_timeout_s, self._body_stalled)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm(body_timeout_s, self._body_stalled)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _headers_overdue(self) -> None:
            self._deadline = None
            self.transport.close()

        def _body_stalled(self) -> None:
            self._deadline = None
            if self.flow is not None and self.flow.read_paused:
                self._arm(body_timeout_s, self._body_stalled)  # we stopped reading, not the client
                return
            self.transport.close()

        def _arm(self, delay_s: float, callback: Any) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(delay_s, callback)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    return GuardedHttpToolsProtocol


class _Throttled:
    """A warning logged at most once per interval (a flood must not become a flood of log lines)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = 0.0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            logger.warning(message, *args)
