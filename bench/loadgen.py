"""A load generator that costs the server almost nothing: HTTP/1.1 keep-alive over a plain socket.

On a 2-core machine the client shares the CPU with the server it measures. httpx spends 1.5 to 2 ms of CPU per
request here, more than a no-op job costs the server, so it measured mostly itself; this client spends a few tens
of microseconds (one `sendall`, one or two `recv`). It speaks just enough HTTP for the benchmark: requests with a
JSON body or none, responses with a Content-Length (every route it is pointed at answers with one).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class Connection:
    """One keep-alive connection; `request` returns the status code and body."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        self._sock = socket.create_connection((parts.hostname, parts.port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._head = f"Host: {parts.hostname}:{parts.port}\r\n{extra}"
        self._buffer = b""

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        kind = "Content-Type: application/json\r\n" if body is not None else ""
        head = f"{method} {path} HTTP/1.1\r\n{self._head}{kind}Content-Length: {len(data)}\r\n\r\n"
        self._sock.sendall(head.encode() + data)
        return self._response()

    def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self._buffer:
            self._receive()
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ValueError(f"response without Content-Length: {head!r}")
        self._buffer = rest
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, body

    def _receive(self) -> None:
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self._sock.close()


@dataclass
class Run:
    """What a load run measured: request latencies (seconds) and the rate over its wall time."""

    latencies: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def drive(
    url: str,
    method: str,
    path: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    requests: int | None = None,
    seconds: float | None = None,
    concurrency: int = 1,
    expect: int = 200,
) -> Run:
    """`concurrency` connections, each sending its next request once the previous one is answered, until
    `requests` have been sent or `seconds` have passed. Every answer must have the status `expect`."""
    assert (requests is None) != (seconds is None), "give requests or seconds"
    connections = [Connection(url, headers) for _ in range(concurrency)]
    latencies: list[float] = []
    lock = threading.Lock()
    left = requests if requests is not None else 0
    failures: list[BaseException] = []

    def one(connection: Connection, deadline: float) -> None:
        nonlocal left
        try:
            while True:
                if requests is not None:
                    with lock:
                        if left <= 0:
                            return
                        left -= 1
                elif time.perf_counter() >= deadline:
                    return
                started = time.perf_counter()
                status, answer = connection.request(method, path, body)
                elapsed = time.perf_counter() - started
                if status != expect:
                    raise AssertionError(f"{method} {path}: {status} {answer[:300]!r}")
                with lock:
                    latencies.append(elapsed)
        except BaseException as exc:
            failures.append(exc)

    started = time.perf_counter()
    deadline = started + (seconds or 0.0)
    if concurrency == 1:
        one(connections[0], deadline)
    else:
        threads = [threading.Thread(target=one, args=(c, deadline)) for c in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    if failures:
        raise failures[0]
    return Run(latencies, elapsed)
