"""`reimagine serve`: the HTTP API process (uvicorn over `create_app`), which spawns the embedded workers."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from reimagine.config import Settings
from reimagine.errors import ConfigError

logger = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    """Bind the port, check the weights, then open the store and start the app (and its workers).

    Raises `ConfigError` (the port is taken) or `ModelMissing` before anything else happened: no key created, no
    worker spawned.
    """
    from reimagine.api.app import create_app
    from reimagine.api.connections import connection_cap, guarded_http_protocol, raise_descriptor_limit
    from reimagine.api.state import app_state
    from reimagine.queue import open_store
    from reimagine.weights import check_weights

    sock = _bind(settings.host, settings.port)
    try:
        if settings.workers != 0:
            check_weights(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.resolved_database_url, max_attempts=settings.max_attempts)
        if settings.auth and store.keys.count() == 0:
            key = store.keys.create("first")
            # Printed once, on the first start with an empty data directory; only its hash is stored.
            print("Created the first API key (shown once; keep it, or make another with `reimagine keys create`):")
            print(key, flush=True)
        if settings.is_tiny:
            logger.warning("--model tiny: random tiny weights, the images are noise (for tests and demos)")
        elif settings.is_random:
            logger.warning("--model %s: full-size random weights, the images are noise (for measuring)", settings.model)
        descriptors = raise_descriptor_limit()
        max_connections = connection_cap(settings.max_connections, descriptors)
        app = create_app(settings, store=store)
        scheme = "https" if settings.tls_cert else "http"
        logger.info(
            "serving on %s://%s:%s (at most %d connections, %d descriptors)",
            scheme,
            settings.host,
            sock.getsockname()[1],
            max_connections,
            descriptors,
        )
        config = uvicorn.Config(
            app,
            http=guarded_http_protocol(
                header_timeout_s=settings.header_timeout_s,
                body_timeout_s=settings.body_timeout_s,
                max_connections=max_connections,
            ),
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            log_config=None,
            access_log=False,
            # X-Forwarded-* are read by `api.urls.base_url`, from --trusted-proxies only: uvicorn's own handling
            # would trust loopback by default and replace the peer address that decision needs.
            proxy_headers=False,
            # In-flight requests (sync runs) get the drain's grace period: their jobs finish in it, or are given
            # back before its end (worker.loop.DRAIN_MARGIN_S), and then they answer a retryable 503.
            timeout_graceful_shutdown=max(0.5, settings.drain_grace_s - 0.5),  # type: ignore[arg-type]
        )
        # Looked up at the signal: the lifespan replaces it once the workers run.
        _DrainingServer(config, on_exit=lambda: app_state(app).begin_drain()).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a busy port fails at once, with nothing done."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which also starts the drain the moment SIGTERM (or SIGINT) arrives.

    uvicorn first waits for in-flight requests and only then runs the lifespan's shutdown: without this, workers
    would go on claiming jobs (and sync runs would wait for them) through that whole wait.
    """

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
