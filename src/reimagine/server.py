"""Process entry points: `serve` (HTTP API + spawned workers) and a standalone `worker`."""

from __future__ import annotations

import logging
import threading

from reimagine.config import Settings

logger = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    import uvicorn

    from reimagine.api.app import create_app
    from reimagine.queue import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.resolved_database_url, max_attempts=settings.max_attempts)
    if settings.auth and store.count_keys() == 0:
        key = store.create_key("first")
        # Printed once, on the first start with an empty data directory; only its hash is stored.
        print("Created the first API key (shown once; keep it, or make another with `reimagine keys create`):")
        print(key, flush=True)
    if settings.is_tiny:
        logger.warning("--model tiny: random tiny weights, the images are noise (for tests and demos)")
    app = create_app(settings, store=store)
    scheme = "https" if settings.tls_cert else "http"
    logger.info("serving on %s://%s:%s", scheme, settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def run_worker(settings: Settings) -> int:
    """A standalone worker: pulls from the store (any machine), drains on SIGTERM."""
    from reimagine.queue import open_store
    from reimagine.storage import open_storage
    from reimagine.worker.main import Worker, install_drain_handler, load_generate

    stop = threading.Event()
    install_drain_handler(stop)
    store = open_store(settings.resolved_database_url, max_attempts=settings.max_attempts)
    storage = open_storage(settings)
    worker = Worker(settings, store, storage, load_generate(settings))
    logger.info("worker %s ready", worker.owner)

    def wait(timeout: float) -> None:
        stop.wait(min(timeout, 0.05))

    worker.run(stop, wait)
    store.close()
    logger.info("worker stopped")
    return 0
