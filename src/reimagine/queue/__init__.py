"""The job store: the system of record for jobs, events, the webhook outbox, files and API keys.

`open_store(url)` picks the database by URL scheme; both speak the same schema (Alembic migrations in
`reimagine/migrations`), created or migrated on first use. The modules, bottom up:

- `db.py`: the database handle (engine, dialect, migrations, the one read path and the one write path);
- `sqlite.py`: how the handle talks to a SQLite file; `notify.py`: PostgreSQL LISTEN/NOTIFY wake-ups;
- `models.py`: what the store takes and returns (`JobState`/`JobResult`/`Job`, `Outcome` and its factories keyed by
  `reimagine.jobs.ErrorType`, `EventKind`, `NewJob`);
- `transitions.py`: every write of a job's status, checked against `reimagine.jobs.can_transition`;
- `reads.py`: status reads (never the input), events; `submit.py`: enqueue, fair turns, `Idempotency-Key`;
  `files.py`: file rows and their expiry;
- `store.py`: `JobStore`, the one object callers hold: a job's life (claim, lease, complete, cancel, reclaim,
  retention) plus the parts above;
- `outbox.py` (`store.outbox`), `keys.py` (`store.keys`), `usage.py` (`store.usage`), `admin.py` (`store.admin`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reimagine.errors import ConfigError
from reimagine.jobs import ErrorType
from reimagine.queue.db import Database
from reimagine.queue.keys import ApiKey
from reimagine.queue.models import (
    CancelOutcome,
    Event,
    EventKind,
    FileRow,
    InvalidTransition,
    Job,
    LeaseState,
    NewJob,
    Outcome,
    QueueFull,
    WebhookDelivery,
)
from reimagine.queue.store import JobStore

#: The store's name before it was split into modules; kept for branches written against it.
SqlStore = JobStore

__all__ = [
    "ApiKey",
    "CancelOutcome",
    "ErrorType",
    "Event",
    "EventKind",
    "FileRow",
    "InvalidTransition",
    "Job",
    "JobStore",
    "LeaseState",
    "NewJob",
    "Outcome",
    "QueueFull",
    "SqlStore",
    "WebhookDelivery",
    "open_store",
]


def open_store(database_url: str, *, max_attempts: int = 3, clock: Callable[[], float] = time.time) -> JobStore:
    """SQLite (embedded default) or PostgreSQL (multi-machine), by URL scheme; migrates on first use."""
    if not database_url.startswith(("sqlite:", "postgresql:", "postgres:", "postgresql+psycopg:")):
        raise ConfigError(f"`database_url` must start with sqlite: or postgresql:, got {database_url!r}")
    return JobStore(Database(database_url), max_attempts=max_attempts, clock=clock)
