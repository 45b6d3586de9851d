"""The in-process API tier: the whole app (`create_app`) in this process, driven by Starlette's TestClient.

The worker loop runs on a thread (`ThreadWorkers`, standing where serve's worker processes stand) with the fake
`generate` of tests/fakes.py. Everything that needs no process boundary is tested here, in milliseconds per
request; what does (kill -9, drain, several processes, the real CLI) stays in tests/api with `reimagine serve`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reimagine.api.app import create_app
from reimagine.config import Settings
from reimagine.queue import JobStore, open_store
from reimagine.storage.local import LocalStorage
from reimagine.worker.loop import Worker
from reimagine.worker.messages import JobDone, WorkerMessage
from tests.fakes import fake_generate


class ThreadWorkers:
    """One `Worker` on a thread: the `Workers` seam of `create_app` without a process (api/state.py)."""

    def __init__(self, settings: Settings, store: JobStore, storage: LocalStorage) -> None:
        self._worker = Worker(settings, store, storage, fake_generate, notify=self._notify)
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_event: Callable[[], None] = lambda: None
        self._on_webhook_due: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(
        self, *, on_event: Callable[[], None], on_webhook_due: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._on_event, self._on_webhook_due, self._loop = on_event, on_webhook_due, loop
        self._thread = threading.Thread(target=self._worker.run, args=(self._stop, self._wait), name="worker")
        self._thread.start()

    def _wait(self, timeout_s: float) -> None:
        self._woken.wait(timeout_s)
        self._woken.clear()

    def _notify(self, message: WorkerMessage) -> None:
        # As serve's supervisor does with a worker's pipe messages (worker/supervisor.py).
        self._on_event()
        if isinstance(message, JobDone) and message.webhook_due:
            self._on_webhook_due()

    def wake(self) -> None:
        self._woken.set()

    def begin_drain(self) -> None:
        self._stop.set()
        self._woken.set()

    def stop(self) -> None:
        self.begin_drain()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def unavailable(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"expected": 1, "ready": 1, "pids": [None], "errors": []}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, offline=True, heartbeat_s=1, lease_s=4, allow_hosts=["127.0.0.1"])


@pytest.fixture
def app_client(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    """A running app with one worker thread; yields the client and the first API key."""
    store = open_store(settings.resolved_database_url)
    key = store.keys.create("first")
    storage = LocalStorage(settings.files_dir)
    app = create_app(settings, store=store, storage=storage, supervisor=ThreadWorkers(settings, store, storage))
    with TestClient(app, base_url="http://testserver") as client:
        yield client, key
    store.close()


@pytest.fixture
def client(app_client: tuple[TestClient, str]) -> TestClient:
    """The client, sending the first key."""
    client, key = app_client
    client.headers["Authorization"] = f"Key {key}"
    return client


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll `condition` until it returns something truthy (and return that); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"not true within {timeout_s} s: {condition}")
