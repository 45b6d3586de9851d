"""Issue 13 item 7: connections that never finish their request stayed open for good (3,000 of them; 1,100 took
down an API with 1,024 descriptors). Now headers have a deadline, a stalled body a timeout, open connections a cap,
and the descriptor limit is raised at start-up."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.adversarial.probe import LivenessProbe
from tests.conftest import ServeProcess

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
CAP = 400
FLOOD = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    flags = ["--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S)]
    proc = ServeProcess(tmp_path_factory.mktemp("serve"), *flags, "--max-connections", str(CAP), "--workers", "0")
    yield proc.start()
    proc.stop()


def _connect(server: ServeProcess, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server ends the connection within `within_s` (it sends nothing else: no request was complete)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _wait_idle(server: ServeProcess) -> None:
    """Until the previous test's connections are gone: /health/live answers on a fresh connection."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("the server never got its connections back")


def test_an_idle_connection_flood_is_timed_out_while_the_api_answers(server: ServeProcess) -> None:
    flood: list[socket.socket] = []
    with LivenessProbe(server.url) as probe:
        for index in range(FLOOD):
            # Nothing at all, or a request line and half a header dripped in.
            flood.append(_connect(server, b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " if index % 2 else b""))
        started = time.monotonic()
        for sock in flood[1::2]:
            sock.sendall(b"a")  # dripping bytes must not extend the deadline
        closed = [_closed_by_server(sock, within_s=HEADER_TIMEOUT_S + 10) for sock in flood]
        waited_s = time.monotonic() - started
    probe.report(f"{len(flood)} idle connections")
    probe.assert_alive()
    assert all(closed), f"{closed.count(False)} idle connections were left open"
    print(f"{len(flood)} idle connections closed after {waited_s:.1f} s (header deadline {HEADER_TIMEOUT_S} s)")
    for sock in flood:
        sock.close()


def test_connections_past_the_cap_are_closed_at_once(server: ServeProcess) -> None:
    _wait_idle(server)
    flood = [_connect(server) for _ in range(CAP + 20)]  # the module's earlier flood is gone
    # The first CAP are held (until their header deadline); the rest are closed without waiting for it.
    refused = sum(_closed_by_server(sock, within_s=0.5 * HEADER_TIMEOUT_S) for sock in flood[CAP:])
    assert refused >= 15
    for sock in flood:
        sock.close()
    _wait_idle(server)


def test_a_stalled_body_is_timed_out(server: ServeProcess) -> None:
    _wait_idle(server)
    # A submit reads its whole body before answering: 10 of 1,000 bytes, then nothing.
    head = f"POST /bria/reimagine/3.2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nAuthorization: Key {server.key}"
    sock = _connect(server, head.encode() + b"\r\n\r\n" + b'{"prompt":')
    assert _closed_by_server(sock, within_s=BODY_TIMEOUT_S + 10)
    sock.close()
