"""Worker processes of `reimagine serve`: spawn, watch, restart, drain, and give back the jobs of the ones that die.

It runs in the API process (imported by `api/app.py`), so it must never import torch: the processes it spawns
start in `worker/embedded.py`, and the two talk in `worker/messages.py`.

Workers are spawned (never forked: a forked CUDA context is unusable, and a fork would inherit the listening
socket). Each worker slot has a thread that spawns the process, watches it, and outlives it: the kernel's
parent-death signal is tied to the spawning thread, so that thread must not exit before its child.

A worker's pipe is read by `serve`'s event loop: a worker sends two messages per job, and a thread reading them
would wake, take the GIL and then wake the loop for each. Only once the loop has closed (shutting down) does the
slot's thread read what is left.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, assert_never

from reimagine.config import Settings
from reimagine.worker.messages import (
    Hello,
    Idle,
    JobDone,
    JobEvent,
    Log,
    Ready,
    ServeMessage,
    StartFailed,
    Stop,
    Wake,
    WorkerMessage,
)

logger = logging.getLogger(__name__)

_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker still running this long before the end of the grace period is killed (it gives its job back earlier:
#: worker.loop.DRAIN_MARGIN_S), so that serve exits within the grace period.
_KILL_MARGIN_S = 0.5
_WAKE = Wake()


def gpu_count() -> int:
    """NVIDIA GPUs visible to this machine, read from the driver without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def is_local_owner_dead(owner: str) -> bool:
    """True for a lease owner `host/pid/...` on this host whose process no longer exists."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Slot:
    def __init__(self, index: int, env: dict[str, str]) -> None:
        self.index = index
        self.env = env
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.owner: str | None = None
        self.ready = False
        #: why the last start failed (a missing model), shown by /health/ready
        self.error: str | None = None
        #: starts in a row that ended before the worker was ready (reset by `Ready`)
        self.failed_starts = 0
        #: the current process sent `Ready` (unlike `ready`, still true after it exited)
        self.was_ready = False
        #: the current process sent `StartFailed` (why it cannot start)
        self.said_why = False
        #: the worker said it is waiting for work; a wake-up is only sent then, so the pipe never fills up
        self.idle = False
        #: work arrived while the worker was busy: its next "idle" (which may come from a look at the queue made
        #: before that work was queued) is answered with a wake-up at once instead of a sleep of up to a second
        self.pending = False
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        #: set by the event loop when the pipe reached its end (the worker is exiting)
        self.hung_up = threading.Event()


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        gpus = gpu_count()
        count = settings.workers if settings.workers >= 0 else max(1, gpus)
        self._slots = [_Slot(i, self._env_for(i, gpus)) for i in range(count)]
        self._stopping = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._on_event: Callable[[], None] = lambda: None
        self._on_webhook_due: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: when the drain's grace period ends (monotonic); None until SIGTERM or `stop`
        self._drain_deadline: float | None = None

    def _env_for(self, index: int, gpus: int) -> dict[str, str]:
        # One worker per GPU: each sees only its own device, as cuda:0.
        if gpus > 1 and not self.settings.device:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            devices = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
            return {"CUDA_VISIBLE_DEVICES": devices[index % len(devices)]}
        return {}

    def start(
        self,
        *,
        on_event: Callable[[], None],
        on_webhook_due: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Spawn the workers; their messages call `on_event` and `on_webhook_due` on `loop`."""
        self._on_event = on_event
        self._on_webhook_due = on_webhook_due
        self._loop = loop
        self._reconcile()
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._watch, args=(slot,), name=f"worker-slot-{slot.index}")
            slot.thread.start()

    def _reconcile(self) -> None:
        """Startup: jobs left RUNNING by dead local workers (a crash of serve) go back to the queue at once."""
        from reimagine.queue import open_store

        store = open_store(self.settings.resolved_database_url, max_attempts=self.settings.max_attempts)
        try:
            dead = [owner for owner in store.running_owners() if is_local_owner_dead(owner)]
            if dead:
                store.reclaim(owners=dead)
        finally:
            store.close()

    def _watch(self, slot: _Slot) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            self._spawn(slot)
            self._watch_on_loop(slot)
            exit_code = self._reap(slot)
            if self._stopping.is_set():
                return
            if not slot.was_ready:
                slot.failed_starts += 1
                if not slot.said_why:
                    slot.error = f"the worker exited with code {exit_code} while loading the model"
            failures = failures + 1 if time.monotonic() - started < 60 else 1
            delay = _RESTART_BACKOFF_S[min(failures, len(_RESTART_BACKOFF_S)) - 1]
            logger.error("worker %d exited (code %s); restarting in %.0fs", slot.index, exit_code, delay)
            self._stopping.wait(delay)

    def _spawn(self, slot: _Slot) -> None:
        from reimagine.worker.embedded import process_main

        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        data = self.settings.model_dump(mode="json")
        process = self._ctx.Process(
            target=process_main, args=(data, child_conn, slot.env), name=f"reimagine-worker-{slot.index}", daemon=False
        )
        process.start()
        child_conn.close()
        with slot.lock:
            slot.process, slot.conn, slot.ready, slot.owner, slot.pending = process, parent_conn, False, None, False
            slot.was_ready = slot.said_why = False
        logger.info("worker %d spawned (pid %s)", slot.index, process.pid)

    def _pump(self, slot: _Slot) -> None:
        assert slot.conn is not None
        while True:
            try:
                message = slot.conn.recv()
            except (EOFError, OSError):
                return
            self._handle(slot, message)

    def _watch_on_loop(self, slot: _Slot) -> None:
        """Have the event loop read the worker's pipe; return once the worker hangs up or exits."""
        loop, conn, process = self._loop, slot.conn, slot.process
        assert loop is not None and conn is not None and process is not None
        slot.hung_up.clear()

        def readable() -> None:
            try:
                # A readable pipe holds at least the start of a message; `recv` waits at most for its rest.
                while conn.poll():
                    self._handle(slot, conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(conn.fileno())
                slot.hung_up.set()

        if not self._on_loop(lambda: loop.add_reader(conn.fileno(), readable)):
            self._pump(slot)  # the loop is gone (shutting down): read here
            return
        while not slot.hung_up.is_set() and process.is_alive():
            wait([process.sentinel], timeout=0.5)
        # What it sent before exiting (its last event, or why it could not start) is read before the pipe closes.
        if not self._on_loop(readable):
            self._pump(slot)

    def _on_loop(self, call: Callable[[], object]) -> bool:
        """Run `call` on the event loop and wait for it; False if the loop closed first (then it never runs)."""
        loop = self._loop
        assert loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                call()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:
            return False
        while not done.wait(0.5):
            if loop.is_closed():
                return False
        return True

    def _handle(self, slot: _Slot, message: WorkerMessage) -> None:
        match message:
            case JobEvent():
                self._on_event()
            case JobDone(webhook_due=webhook_due):
                self._on_event()
                if webhook_due:
                    self._on_webhook_due()
            case Idle():
                with slot.lock:
                    if slot.pending:
                        slot.pending = False
                        self._send(slot, _WAKE)
                    else:
                        slot.idle = True
            case Hello(owner=owner):
                slot.owner = owner
            case Ready():
                slot.ready, slot.was_ready, slot.error, slot.failed_starts = True, True, None, 0
                logger.info("worker %d ready", slot.index)
            case Log(message=line):
                logger.info("worker %d: %s", slot.index, line)
            case StartFailed(reason=reason):
                slot.error, slot.said_why = reason, True
                logger.error("worker %d cannot start: %s", slot.index, reason)
            case _:
                assert_never(message)

    @staticmethod
    def _send(slot: _Slot, message: ServeMessage) -> None:
        """Send to a slot's worker (the caller holds `slot.lock`); a dead worker is its watcher's business."""
        try:
            assert slot.conn is not None
            slot.conn.send(message)
        except (BrokenPipeError, OSError):
            pass

    def _reap(self, slot: _Slot) -> int | None:
        process = slot.process
        assert process is not None
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        with slot.lock:
            slot.ready = False
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
        if slot.owner is not None and not self._stopping.is_set():
            self._give_back_jobs(slot.owner)
        code: int | None = process.exitcode
        return code

    def _give_back_jobs(self, owner: str) -> None:
        from reimagine.queue import open_store

        store = open_store(self.settings.resolved_database_url, max_attempts=self.settings.max_attempts)
        try:
            store.reclaim(owners=[owner])
        finally:
            store.close()
        self._on_event()

    def wake(self) -> None:
        for slot in self._slots:
            with slot.lock:
                if slot.conn is None:
                    continue
                if not slot.idle:
                    slot.pending = True
                    continue
                slot.idle = False
                self._send(slot, _WAKE)

    def begin_drain(self) -> None:
        """SIGTERM reached `serve`: every worker stops claiming now and has the grace period for its running job.

        Called on the event loop as soon as the signal arrives, before the HTTP server winds down. A worker busy
        with a job does not read its pipe, so it is told by a signal too (its drain handler sets its stop).
        """
        if self._drain_deadline is not None:
            return
        self._drain_deadline = time.monotonic() + max(0.5, self.settings.drain_grace_s - _KILL_MARGIN_S)
        self._stopping.set()
        for slot in self._slots:
            with slot.lock:
                if slot.conn is not None:
                    self._send(slot, Stop())
                if slot.process is not None and slot.process.is_alive():
                    slot.process.terminate()

    def stop(self) -> None:
        """Drain (if SIGTERM has not begun it) and wait for the workers, up to the end of the grace period.

        A worker still running then is killed, and its job given back without counting an attempt: a graceful
        shutdown never poisons a job.
        """
        self.begin_drain()
        assert self._drain_deadline is not None
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(timeout=max(0.1, self._drain_deadline - time.monotonic()))
        killed = []
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
                if slot.owner is not None:
                    killed.append(slot.owner)
        if killed:
            from reimagine.queue import open_store

            store = open_store(self.settings.resolved_database_url, max_attempts=self.settings.max_attempts)
            try:
                given = store.give_back(killed)
            finally:
                store.close()
            logger.warning("killed %d worker(s) at the end of the grace period; gave back %s", len(killed), given)

    def unavailable(self) -> str | None:
        """Why no worker can run a job, once every worker failed to start `worker_start_failures` times in a row.

        None while some worker is ready, or may still become ready: submits are refused (503) only then.
        """
        limit = self.settings.worker_start_failures
        if not self._slots or any(slot.ready or slot.failed_starts < limit for slot in self._slots):
            return None
        causes = sorted({slot.error or "unknown" for slot in self._slots})
        return f"every worker failed to start {limit} times in a row: " + "; ".join(causes)

    def describe(self) -> dict[str, Any]:
        return {
            "expected": len(self._slots),
            "ready": sum(1 for slot in self._slots if slot.ready),
            "pids": [slot.process.pid if slot.process is not None else None for slot in self._slots],
            "errors": [slot.error for slot in self._slots if slot.error],
            "failed_starts": [slot.failed_starts for slot in self._slots],
        }
