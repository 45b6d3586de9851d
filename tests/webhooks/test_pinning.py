"""DNS rebinding: a webhook goes to the addresses the SSRF check approved, never to a later DNS answer."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import pytest

from reimagine.fetcher import AsyncPinnedBackend, check_url
from reimagine.queue import JobStore
from reimagine.webhooks import WebhookDispatcher, WebhookKey
from tests.webhooks.conftest import finish_job, settings_for

REBINDING_HOST = "rebind.test"


class _Server:
    """A loopback HTTP server on one address that answers 200 and counts the POSTs it got."""

    def __init__(self, address: str, port: int) -> None:
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                server.hits += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    """The approved receiver on 127.0.0.2 and, on the same port, the loopback victim on 127.0.0.1."""
    try:
        approved = _Server("127.0.0.2", 0)
    except OSError:
        pytest.skip("127.0.0.2 cannot be bound here")
    victim = _Server("127.0.0.1", approved.port)
    yield approved, victim
    approved.close()
    victim.close()


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`rebind.test` answers 127.0.0.2 to the first lookup (the check) and 127.0.0.1 to every later one."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode("ascii")
        if host != REBINDING_HOST:
            return real(host, port, *args, **kwargs)
        address = "127.0.0.2" if not answers else "127.0.0.1"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_rebinding_host_is_delivered_to_the_checked_address_only(
    tmp_path: Path, store: JobStore, servers: tuple[_Server, _Server], rebinding_dns: list[str]
) -> None:
    approved, victim = servers
    settings = settings_for(tmp_path, allow_hosts=["127.0.0.2"])
    dispatcher = WebhookDispatcher(
        store.outbox, settings, WebhookKey.load_or_create(settings), check_target=lambda url: check_url(url, settings)
    )
    job = finish_job(store, f"http://{REBINDING_HOST}:{approved.port}/hook")
    (delivery,) = store.outbox.due_webhooks(0.0 + 1e12)

    async def deliver() -> str:
        return await dispatcher.deliver_once(delivery)

    assert asyncio.run(deliver()) == "delivered", job.id
    assert rebinding_dns[0] == "127.0.0.2"  # the check saw the approved address
    assert (approved.hits, victim.hits) == (1, 0)


def test_the_policy_itself_refuses_the_rebound_answer(rebinding_dns: list[str], tmp_path: Path) -> None:
    """The premise: the second answer (127.0.0.1) would have been refused had it been checked."""
    settings = settings_for(tmp_path, allow_hosts=["127.0.0.2"])
    assert check_url(f"http://{REBINDING_HOST}/", settings) == [ipaddress.ip_address("127.0.0.2")]
    with pytest.raises(Exception, match="private or reserved"):
        check_url(f"http://{REBINDING_HOST}/", settings)


def test_async_pinned_backend_refuses_an_unchecked_host() -> None:
    backend = AsyncPinnedBackend("example.com", [ipaddress.ip_address("127.0.0.2")])

    async def connect() -> None:
        await backend.connect_tcp("localhost", 80, timeout=1.0)

    with pytest.raises(httpcore.ConnectError, match="not checked"):
        asyncio.run(connect())
