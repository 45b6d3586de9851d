"""The API suite runs on both systems of record: SQLite in the data directory, and a real PostgreSQL.

`backend` parametrizes every test that starts a server (the shared `server` and the tests' own `ServeProcess`es
through `store_flags`); PostgreSQL is the throw-away cluster of tests/pgserver.py, a fresh database per server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ServeProcess
from tests.pgserver import PgServer, pg_server

__all__ = ["pg_server"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _flags(request: pytest.FixtureRequest, backend: str) -> list[str]:
    if backend == "sqlite":
        return []
    pg: PgServer = request.getfixturevalue("pg_server")
    return ["--database-url", pg.create_database()]


@pytest.fixture
def store_flags(request: pytest.FixtureRequest, backend: str) -> list[str]:
    """`serve` flags for a new, empty store of this run's backend (none for SQLite: it lives in the data dir)."""
    return _flags(request, backend)


@pytest.fixture
def new_store_flags(request: pytest.FixtureRequest, backend: str) -> Callable[[], list[str]]:
    """Makes `store_flags` for each further server a test starts (each needs its own empty store)."""
    return lambda: _flags(request, backend)


def database_url(data_dir: Path, store_flags: list[str]) -> str:
    """The store a server started with `store_flags` and `data_dir` uses."""
    return store_flags[1] if store_flags else f"sqlite:///{(data_dir / 'reimagine.db').resolve()}"


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, backend: str
) -> Iterator[ServeProcess]:
    flags = _flags(request, backend)
    proc = ServeProcess(
        tmp_path_factory.mktemp("serve"), "--allow-hosts", "127.0.0.1", "--trusted-proxies", "127.0.0.1", *flags
    ).start()
    yield proc
    proc.stop()
