"""The API process's collaborators: one `AppState`, built by `create_app`, read by every route as `state_of(request)`.

A route that needs a new collaborator gets a field here (typed), set in `create_app`; nothing else is put on
`app.state`. The worker processes are behind `Workers`, the slice of `worker.supervisor.Supervisor` the API uses:
the API process never imports torch, and a test can run the API with no workers at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request

from reimagine.api.enqueuer import Enqueuer
from reimagine.api.hub import EventHub
from reimagine.config import Settings
from reimagine.limits import RateLimiter
from reimagine.metrics import Metrics
from reimagine.queue.keys import KeyGrant
from reimagine.queue.store import JobStore
from reimagine.schemas import ReimagineInput
from reimagine.storage import Storage
from reimagine.webhooks import WebhookKey


class Workers(Protocol):
    """The embedded worker processes, as the API drives them (`worker.supervisor.Supervisor`)."""

    def start(
        self, *, on_event: Callable[[], None], on_webhook_due: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None: ...

    def stop(self) -> None:
        """Drain and wait for the workers to exit (stragglers are killed)."""

    def begin_drain(self) -> None:
        """Workers finish their current job (within the grace period) and take no new one."""

    def wake(self) -> None:
        """Work was queued (or a cancel asked): idle workers look at the store now."""

    def unavailable(self) -> str | None:
        """Why no worker can run a job (every one failed to start); None while one can, or may yet."""

    def describe(self) -> dict[str, Any]:
        """For `/health/ready`: expected and ready workers, their pids and start errors."""


@dataclass(eq=False)
class AppState:
    settings: Settings
    store: JobStore
    storage: Storage
    enqueuer: Enqueuer
    hub: EventHub
    metrics: Metrics
    webhook_key: WebhookKey
    limiter: RateLimiter
    #: the request's key -> what it may do (`api/auth.py`: a `KeyCache`, or `open_access` with `--no-auth`)
    authenticate: Callable[[str], KeyGrant | None]
    #: raises `InputError` for a URL the fetcher would refuse (`fetcher.check_url` with these settings)
    check_url: Callable[[str], object]
    #: raises `InputError` for a prompt over the model's limit (when the API has the tokenizer)
    check_prompt: Callable[[ReimagineInput], None]
    workers: Workers | None = None
    #: the key of signed file URLs, read once from the data directory by the first route that needs it
    signing_secret: bytes | None = None
    #: set on SIGTERM (api/serve.py): sync runs whose job will not run before the exit answer a retryable 503
    draining: threading.Event = field(default_factory=threading.Event)
    #: what else a drain does once the app runs (the lifespan tells the workers, on the event loop)
    on_drain: Callable[[], object] | None = None

    def begin_drain(self) -> None:
        """SIGTERM (`api/serve.py`); safe from a signal handler: flags here, the rest is scheduled."""
        self.draining.set()
        if self.on_drain is not None:
            self.on_drain()

    def notify_workers(self) -> None:
        if self.workers is not None:
            self.workers.wake()

    def unavailable(self) -> str | None:
        """Why no worker of this replica can run a job; None: submits are taken."""
        return self.workers.unavailable() if self.workers is not None else None


def state_of(request: Request) -> AppState:
    """The app's state (the one way routes reach the store, storage, hub, ...)."""
    return app_state(request.app)


def app_state(app: FastAPI) -> AppState:
    state: AppState = app.state.reimagine
    return state
