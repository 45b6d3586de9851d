"""The job store: the system of record for jobs, events, the webhook outbox, files and API keys.

`open_store(url)` picks the backend by URL scheme; both speak the same schema (Alembic migrations in
`reimagine/migrations`), created or migrated on first use.
"""

from __future__ import annotations

from reimagine.errors import ConfigError
from reimagine.queue.models import (
    ApiKey,
    CancelOutcome,
    Event,
    FileRow,
    Job,
    LeaseState,
    NewJob,
    Outcome,
    QueueFull,
    WebhookDelivery,
)
from reimagine.queue.sql import SqlStore

__all__ = [
    "ApiKey",
    "CancelOutcome",
    "Event",
    "FileRow",
    "Job",
    "LeaseState",
    "NewJob",
    "Outcome",
    "QueueFull",
    "SqlStore",
    "WebhookDelivery",
    "open_store",
]


def open_store(database_url: str, *, max_attempts: int = 3) -> SqlStore:
    """SQLite (embedded default) or PostgreSQL (multi-machine), by URL scheme; migrates on first use."""
    if database_url.startswith("sqlite:"):
        return SqlStore(database_url, max_attempts=max_attempts)
    if database_url.startswith(("postgresql:", "postgres:", "postgresql+psycopg:")):
        return SqlStore(database_url, max_attempts=max_attempts)
    raise ConfigError(f"`database_url` must start with sqlite: or postgresql:, got {database_url!r}")
