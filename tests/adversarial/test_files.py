"""Issue 13 items 6 and 9 (files): uploads and downloads held whole in memory (a 1 GiB upload took the API from
286 MB to 2.3 GB, each GET another 1 GB), no Range requests, no `nosniff`, and a storage route that parsed a
malformed body (422) before it checked the key (401)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServeProcess

MIB = 1024 * 1024


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssSampler:
    """The peak resident memory of a process, sampled every few milliseconds while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = _rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _body(total: int, chunk: bytes = b"\x5a" * MIB) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = chunk[: min(len(chunk), total - sent)]
        sent += len(piece)
        yield piece


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("serve"), "--max-upload-bytes", str(2 * 1024 * MIB), "--workers", "0")
    yield proc.start()
    proc.stop()


def _cdn_headers(http: httpx.Client, server: ServeProcess) -> dict[str, str]:
    token = http.post("/storage/auth/token", headers=server.headers()).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_a_1_gib_upload_and_download_stay_out_of_memory(big_server: ServeProcess) -> None:
    assert big_server.proc is not None
    size = 1024 * MIB
    with httpx.Client(base_url=big_server.url, timeout=300) as http:
        headers = {**_cdn_headers(http, big_server), "content-type": "application/octet-stream"}
        http.get("/health/live")
        idle = _rss_bytes(big_server.proc.pid)
        with RssSampler(big_server.proc.pid) as upload_rss:
            started = time.monotonic()
            response = http.post("/files/upload", content=_body(size), headers=headers)
            upload_s = time.monotonic() - started
        assert response.status_code == 200, response.text
        url = response.json()["file_url"]
        assert response.json()["file_size"] == size
        with RssSampler(big_server.proc.pid) as download_rss:
            received = 0
            started = time.monotonic()
            with http.stream("GET", url) as download:
                assert download.status_code == 200
                assert download.headers["content-length"] == str(size)
                for chunk in download.iter_bytes():
                    received += len(chunk)
            download_s = time.monotonic() - started
            head = http.head(url)
        assert received == size
        assert head.status_code == 200 and head.headers["content-length"] == str(size)
    print(
        f"1 GiB: idle RSS {idle / MIB:.0f} MiB; upload peak +{(upload_rss.peak - idle) / MIB:.0f} MiB "
        f"({upload_s:.1f} s); download+HEAD peak +{(download_rss.peak - idle) / MIB:.0f} MiB ({download_s:.1f} s)"
    )
    # Generous: issue 13 asks for 200 MB over idle; whole-file handling costs 1,000 MB and more.
    assert upload_rss.peak - idle < 200 * MIB
    assert download_rss.peak - idle < 200 * MIB


def test_range_requests_and_nosniff(server: ServeProcess) -> None:
    data = bytes(range(256)) * 64
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post(
            "/files/upload", content=data, headers={**_cdn_headers(http, server), "content-type": "text/html"}
        )
        url = response.json()["file_url"]
        whole = http.get(url)
        assert whole.content == data and whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["x-content-type-options"] == "nosniff"
        part = http.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        assert http.get(url, headers={"Range": "bytes=-4"}).content == data[-4:]
        assert http.get(url, headers={"Range": f"bytes={len(data) - 3}-"}).content == data[-3:]
        refused = http.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert refused.status_code == 416 and refused.headers["content-range"] == f"bytes */{len(data)}"
        assert http.get(url, headers={"Range": "bytes=0-1,4-5"}).content == data  # several ranges: the whole file


def test_uploads_over_the_limit_leave_nothing_behind(server: ServeProcess) -> None:
    limit = 100 * MIB  # the default
    with httpx.Client(base_url=server.url, timeout=60) as http:
        headers = _cdn_headers(http, server)
        assert http.post("/files/upload", content=b"x" * (limit + 1), headers=headers).status_code == 413
        # Without a Content-Length the limit is found while streaming.
        streamed = http.post("/files/upload", content=_body(limit + MIB), headers=headers)
        assert streamed.status_code == 413
    assert not any((server.data_dir / ".incoming").iterdir())


@pytest.mark.parametrize(
    "path", ["/storage/upload/initiate", "/storage/upload/initiate-multipart", "/storage/auth/token"]
)
def test_storage_routes_check_the_key_before_the_body(server: ServeProcess, path: str) -> None:
    response = httpx.post(server.url + path, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 401
    authorized = httpx.post(
        server.url + path, content=b"{not json", headers={**server.headers(), "content-type": "application/json"}
    )
    assert authorized.status_code in (200, 422)


def test_forwarded_host_is_ignored_from_an_untrusted_client(server: ServeProcess) -> None:
    headers = {**server.headers(), "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    submitted = httpx.post(server.url + "/bria/reimagine/3.2", json={"prompt": "a"}, headers=headers).json()
    assert submitted["response_url"].startswith(server.url + "/")


def test_forwarded_host_is_honoured_from_a_configured_proxy(tmp_path: Path) -> None:
    proxy = ServeProcess(tmp_path, "--trusted-proxies", "127.0.0.0/8", "--workers", "0").start()
    try:
        headers = {**proxy.headers(), "X-Forwarded-Host": "images.example.com", "X-Forwarded-Proto": "https"}
        submitted = httpx.post(proxy.url + "/bria/reimagine/3.2", json={"prompt": "a"}, headers=headers).json()
        assert submitted["response_url"].startswith("https://images.example.com/")
    finally:
        proxy.stop()
