"""The fetcher's SSRF policy and limits, against real sockets on loopback."""

from __future__ import annotations

import ipaddress
import ssl
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpcore
import pytest

from reimagine.config import Settings
from reimagine.errors import FetchRefused
from reimagine.fetcher import _PinnedBackend, check_url, fetch, is_public_address
from tests.files.conftest import LoopbackServer


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fec0::1]/",  # site-local (issue 13 item 9): Python calls it global
        "http://[feff:ffff::1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:a00:1::]/",
        "http://2130706433/",
    ],
)
def test_check_url_refuses_private_addresses(tmp_path: Path, url: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        check_url(url, settings(tmp_path), "canny_image_url")
    assert caught.value.field == "canny_image_url"
    assert "private or reserved" in caught.value.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1/", "http:///x"])
def test_check_url_refuses_other_schemes_and_malformed_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(FetchRefused):
        check_url(url, settings(tmp_path), "depth_image_url")


def test_public_addresses_are_public() -> None:
    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"):
        assert is_public_address(ipaddress.ip_address(text)), text


def test_fetch_refuses_loopback_server_by_default(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.body("/a.bin", b"secret")
    with pytest.raises(FetchRefused, match="private or reserved"):
        fetch(url, settings(tmp_path), "canny_image_url")


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_allow_list_admits_loopback(tmp_path: Path, loopback: LoopbackServer, allowed: str) -> None:
    url = loopback.body("/a.bin", b"hello", "image/png").replace("127.0.0.1", "localhost")
    if allowed != "localhost":
        url = url.replace("localhost", "127.0.0.1")
    fetched = fetch(url, settings(tmp_path, allow_hosts=[allowed]), "canny_image_url")
    assert fetched.data == b"hello"
    assert fetched.content_type == "image/png"


def test_allowed_host_name_does_not_admit_other_private_hosts(tmp_path: Path) -> None:
    with pytest.raises(FetchRefused):
        check_url("http://10.0.0.1/", settings(tmp_path, allow_hosts=["localhost"]), "f")


def test_redirect_to_private_address_refused(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.redirect("/go", "http://169.254.169.254/latest/meta-data/")
    with pytest.raises(FetchRefused, match="169.254.169.254"):
        fetch(url, settings(tmp_path, allow_hosts=["127.0.0.1"]), "depth_image_url")


def test_redirects_are_followed_and_capped(tmp_path: Path, loopback: LoopbackServer) -> None:
    loopback.body("/final", b"done")
    loopback.redirect("/hop", "/final")
    assert fetch(loopback.url + "/hop", settings(tmp_path, allow_hosts=["127.0.0.1"]), "f").data == b"done"
    loopback.redirect("/loop", "/loop")
    with pytest.raises(FetchRefused, match="redirects"):
        fetch(loopback.url + "/loop", settings(tmp_path, allow_hosts=["127.0.0.1"]), "f")


def test_size_cap_by_content_length(tmp_path: Path, loopback: LoopbackServer) -> None:
    url = loopback.body("/big", b"x" * 2000)
    with pytest.raises(FetchRefused, match="1000 byte limit"):
        fetch(url, settings(tmp_path, allow_hosts=["127.0.0.1"], fetch_max_bytes=1000), "f")


def test_size_cap_while_streaming(tmp_path: Path, loopback: LoopbackServer) -> None:
    def chunked(handler: BaseHTTPRequestHandler) -> None:
        handler.protocol_version = "HTTP/1.0"  # no Content-Length: the body runs until the connection closes
        handler.send_response(200)
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b"y" * 1000)

    loopback.routes["/stream"] = chunked
    with pytest.raises(FetchRefused, match="5000 byte limit"):
        fetch(loopback.url + "/stream", settings(tmp_path, allow_hosts=["127.0.0.1"], fetch_max_bytes=5000), "f")


def test_total_time_cap(tmp_path: Path, loopback: LoopbackServer) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b"z")
            handler.wfile.flush()
            time.sleep(0.1)

    loopback.routes["/drip"] = drip
    started = time.monotonic()
    with pytest.raises(FetchRefused, match="longer than"):
        fetch(loopback.url + "/drip", settings(tmp_path, allow_hosts=["127.0.0.1"], fetch_timeout_s=0.5), "f")
    assert time.monotonic() - started < 3


def test_http_error_status_refused(tmp_path: Path, loopback: LoopbackServer) -> None:
    with pytest.raises(FetchRefused, match="HTTP 404"):
        fetch(loopback.url + "/missing", settings(tmp_path, allow_hosts=["127.0.0.1"]), "f")


def test_pinned_backend_never_connects_to_an_unchecked_host() -> None:
    backend = _PinnedBackend("example.com", [ipaddress.ip_address("127.0.0.1")])
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("evil.example", 80)


@pytest.mark.parametrize(("cert_host", "admitted"), [("localhost", True), ("other.test", False)])
def test_https_to_a_pinned_address_still_verifies_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cert_host: str, admitted: bool
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_host).configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # read by ssl.create_default_context()
    server = LoopbackServer(tls=server_tls)
    try:
        url = server.body("/x.png", b"tls").replace("127.0.0.1", "localhost")
        test_settings = settings(tmp_path, allow_hosts=["localhost"])
        if admitted:
            assert fetch(url, test_settings, "f").data == b"tls"
        else:
            with pytest.raises(FetchRefused, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                fetch(url, test_settings, "f")
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
