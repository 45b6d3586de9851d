"""Webhook test infrastructure: a real SQLite store, a finished job with a webhook, a loopback receiver."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reimagine.config import Settings
from reimagine.jobs import JobStatus
from reimagine.queue import Job, JobStore, NewJob, Outcome, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = open_store(f"sqlite:///{tmp_path / 'reimagine.db'}")
    yield store
    store.close()


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    """Settings with webhook retries squeezed into about a second."""
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "webhook_window_s": 0.6,
        "webhook_max_attempts": 4,
        "webhook_timeout_s": 2.0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def finish_job(store: JobStore, webhook_url: str) -> Job:
    """Enqueue, claim and complete a job; completing it writes its outbox row."""
    job, _ = store.enqueue(
        NewJob(id=str(uuid.uuid4()), key_id="k", endpoint="e", input={"prompt": "x"}, webhook_url=webhook_url)
    )
    claimed = store.claim("test-worker", 30.0)
    assert claimed is not None and claimed.id == job.id
    outcome = Outcome(status=JobStatus.SUCCEEDED, result_status=200, result_body={"image": {"url": "http://x/i.png"}})
    assert store.complete(claimed.id, claimed.fence, outcome)
    finished = store.get(job.id)
    assert finished is not None
    return finished


class Receiver:
    """A loopback HTTP server: answers `statuses[n]` to the n-th POST (the last one thereafter); records each."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = statuses or (200,)
        self.attempts: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.attempts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    n = len(receiver.attempts)
                self.send_response(receiver.statuses[min(n, len(receiver.statuses)) - 1])
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?x=1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[type[Receiver]]:
    made: list[Receiver] = []

    class Tracked(Receiver):
        def __init__(self, *statuses: int) -> None:
            super().__init__(*statuses)
            made.append(self)

    yield Tracked
    for receiver in made:
        receiver.close()
