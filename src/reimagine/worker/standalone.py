"""`reimagine worker`: a worker process of its own, on any machine that reaches the store and the storage.

Unlike an embedded worker (worker/embedded.py) it has no pipe to a `serve`: it learns of new work from PostgreSQL
NOTIFY (queue/notify.py), or by polling SQLite on one machine.
"""

from __future__ import annotations

import logging
import threading
import time

from reimagine.config import Settings

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """A standalone worker: pulls from the store (any machine), drains on SIGTERM."""
    from reimagine.queue import open_store
    from reimagine.storage import open_storage
    from reimagine.weights import check_weights
    from reimagine.worker.loop import Worker, install_drain_handler, load_generate

    check_weights(settings)
    stop = threading.Event()
    install_drain_handler(stop)
    store = open_store(settings.resolved_database_url, max_attempts=settings.max_attempts)
    storage = open_storage(settings)
    worker = Worker(settings, store, storage, load_generate(settings))
    logger.info("worker %s ready on device %s", worker.owner, settings.device or "auto (cuda:0 when present, else cpu)")

    # PostgreSQL: NOTIFY wakes an idle worker the moment a job is queued anywhere; the 1 s poll is the backstop
    # for notifications lost while reconnecting. SQLite (one machine): a 50 ms poll.
    from reimagine.queue.notify import QUEUED, open_listener

    woken = threading.Event()
    listener = open_listener(store.database_url, lambda payload: woken.set() if payload == QUEUED else None)

    def wait(timeout: float) -> None:
        if not listener.is_live:
            stop.wait(min(timeout, 0.05))
            return
        # Short slices so that SIGTERM (which only sets `stop`) ends an idle worker promptly.
        deadline = time.monotonic() + timeout
        while not stop.is_set() and not woken.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
        woken.clear()

    while not stop.is_set():
        try:
            worker.run(stop, wait)
        except Exception:
            # The store is unreachable (PostgreSQL restarting, network): keep the loaded model and retry; a job
            # whose result could not be written comes back to the queue when its lease expires.
            logger.exception("worker loop failed; retrying in 2s")
            stop.wait(2.0)
    listener.stop()
    store.close()
    logger.info("worker stopped")
    return 0
