"""Hostile input against a real `reimagine serve`: every refusal is a 4xx naming what is wrong, never a 500."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.api.helpers import ENDPOINT, REQUESTS, submit, wait_completed
from tests.conftest import ServeProcess

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "caf\xe9"}',  # Latin-1, not UTF-8
        b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}",  # past Python's 4300-digit int limit
        b'{"prompt": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # past the recursion limit
    ],
    ids=["not-utf8", "huge-int", "deep-nesting"],
)
@pytest.mark.parametrize("path", [ENDPOINT, f"/run{ENDPOINT}"])
def test_undecodable_json_is_422(client: httpx.Client, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-inf"])
def test_start_timeout_must_be_finite(client: httpx.Client, value: str) -> None:
    response = client.post(ENDPOINT, json={"prompt": "a"}, headers={"X-Fal-Request-Timeout": value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "x-fal-request-timeout"]


@pytest.mark.parametrize("request_id", ["%00", "a%0D%0AX-Injected:%201", "%7F", "%E2%82%AC"])
def test_unknown_ids_that_are_not_header_safe_are_404(client: httpx.Client, request_id: str) -> None:
    # Such ids used to be echoed in x-fal-request-id: a 500, or a connection dropped without an answer.
    for method, suffix in [("GET", "/status"), ("GET", "/status/stream"), ("GET", ""), ("PUT", "/cancel")]:
        response = client.request(method, f"{REQUESTS}/{request_id}{suffix}")
        assert response.status_code == 404, (method, suffix, response.text)
        assert "x-fal-request-id" not in response.headers
    # The server is still answering, and known requests still carry their id.
    request_id = submit(client, {"prompt": "a"})["request_id"]
    wait_completed(client, request_id)
    assert client.get(f"{REQUESTS}/{request_id}").headers["x-fal-request-id"] == request_id


@pytest.mark.parametrize("target", ["https://queue.fal.run:abc/x", "https://queue.fal.run:99999/x", "https://[::1/x"])
def test_proxy_refuses_malformed_target_urls(client: httpx.Client, target: str) -> None:
    response = client.post("/api/fal/proxy", json={"prompt": "a"}, headers={"x-fal-target-url": target})
    assert response.status_code == 400, response.text


def test_a_body_cut_short_is_not_a_server_error(server: ServeProcess, client: httpx.Client) -> None:
    # A client that promises more body than it sends and hangs up: no traceback in the log, and the server goes on.
    host, port = server.url.removeprefix("http://").split(":")
    logged = len(server.output)
    for path in (ENDPOINT, "/files/upload"):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f'Authorization: {client.headers["authorization"]}\r\nContent-Length: 1000\r\n\r\n{{"pro'.encode()
            )
    request_id = submit(client, {"prompt": "a"})["request_id"]
    wait_completed(client, request_id)
    assert not any("Exception in ASGI application" in line for line in server.output[logged:]), server.output[logged:]
