"""One `reimagine serve` per module for the attacks, with the tiny model's tokenizer (the API counts tokens)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("serve"), "--model", "tiny", "--allow-hosts", "127.0.0.1").start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
        yield http
