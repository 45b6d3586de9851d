"""The store contract runs over every backend: SQLite in a temp dir and a real PostgreSQL started by the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reimagine.queue import JobStore, open_store
from tests.fakes import Clock
from tests.pgserver import PgServer, pg_server

__all__ = ["pg_server"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reimagine.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_for(database_url: str) -> Iterator[Callable[..., JobStore]]:
    """Opens more stores on the same database (other processes' view); all closed at the end."""
    opened: list[JobStore] = []

    def open_(**kwargs: Any) -> JobStore:
        store = open_store(database_url, **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_for: Callable[..., JobStore], clock: Clock) -> JobStore:
    return open_for(max_attempts=2, clock=clock)
