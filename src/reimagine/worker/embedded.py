"""A worker process spawned by `reimagine serve` (its `Supervisor`, worker/supervisor.py): the process's main.

The pipe to `serve` carries wake-ups one way and events/readiness the other (worker/messages.py). The worker must
never outlive `serve` (a second `serve` would otherwise find a stranger holding the GPU): the kernel kills it when
its parent dies (PR_SET_PDEATHSIG), and a watchdog thread exits if the pipe closes or the parent pid changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, assert_never

from reimagine.worker.messages import Hello, Idle, Log, Ready, ServeMessage, StartFailed, Stop, Wake, WorkerMessage

_IDLE = Idle()


def process_main(settings_data: dict[str, Any], conn: Connection, env: dict[str, str]) -> None:
    os.environ.update(env)
    parent = os.getppid()
    _die_with_parent(parent)

    from reimagine.config import Settings
    from reimagine.errors import ReimagineError
    from reimagine.logs import configure_logging
    from reimagine.queue import open_store
    from reimagine.storage import open_storage
    from reimagine.weights import keep_hub_offline
    from reimagine.worker.loop import Worker, install_drain_handler, load_generate, make_owner

    settings = Settings(**settings_data)
    configure_logging(settings, role="worker")
    keep_hub_offline(settings)
    log = logging.getLogger("reimagine.worker")
    owner = make_owner()
    send_lock = threading.Lock()

    def send(message: WorkerMessage) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (BrokenPipeError, EOFError, OSError):
                os._exit(0)

    stop = threading.Event()
    install_drain_handler(stop)
    send(Hello(owner))
    store = open_store(settings.resolved_database_url, max_attempts=settings.max_attempts)
    storage = open_storage(settings)

    def report(message: str) -> None:
        log.info(message)
        send(Log(message))

    try:
        generate = load_generate(settings, log=report)
    except Exception as exc:
        # Tell serve why (its log, /health/ready and, after a few failures in a row, submits show it); it restarts
        # us with a growing back-off. Our own errors say what to do; anything else keeps its traceback here.
        if not isinstance(exc, ReimagineError):
            log.exception("loading the model failed")
        send(StartFailed(str(exc) if isinstance(exc, ReimagineError) else f"{type(exc).__name__}: {exc}"))
        raise SystemExit(3) from exc
    worker = Worker(settings, store, storage, generate, owner=owner, notify=send)
    send(Ready(owner))

    def wait(timeout: float) -> None:
        # Wakes on a message from serve; EOF means serve is gone.
        send(_IDLE)
        try:
            if conn.poll(timeout):
                while conn.poll():
                    message: ServeMessage = conn.recv()
                    match message:
                        case Wake():
                            pass  # the wait is over: the loop looks at the store
                        case Stop():
                            stop.set()
                        case _:
                            assert_never(message)
        except (EOFError, OSError):
            os._exit(0)

    worker.run(stop, wait)
    store.close()


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the watchdog below still ends us within a second
    if os.getppid() != parent:
        os._exit(0)

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()
