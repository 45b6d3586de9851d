"""Webhooks end to end: a flaky receiver on loopback gets fal's payload, signed, retried until it accepts."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from reimagine.webhooks import verify_signature
from tests.api.helpers import ENDPOINT
from tests.conftest import ServeProcess


class _Receiver:
    """Answers 500 to the first `failures` deliveries, then 200; records every attempt."""

    def __init__(self, failures: int) -> None:
        self.attempts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.attempts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.attempts) <= failures else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?x=1"


def test_webhook_retried_until_accepted_and_signed(tmp_path: Path, store_flags: list[str]) -> None:
    receiver = _Receiver(failures=2)
    serve = ServeProcess(
        tmp_path, "--allow-hosts", "127.0.0.1", "--webhook-window-s", "3", "--webhook-max-attempts", "5", *store_flags
    ).start()
    try:
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            submitted = client.post(ENDPOINT, params={"fal_webhook": receiver.url}, json={"prompt": "hook"}).json()
            deadline = time.monotonic() + 30
            while len(receiver.attempts) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(receiver.attempts) == 3, receiver.attempts
            time.sleep(1.0)
            assert len(receiver.attempts) == 3  # delivered once accepted, never again
            jwks = httpx.get(serve.url + "/.well-known/jwks.json").json()
        headers, body = receiver.attempts[-1]
        payload: dict[str, Any] = json.loads(body)
        assert payload["request_id"] == submitted["request_id"]
        assert payload["status"] == "OK"
        assert payload["payload"]["image"]["width"] == 1024
        assert headers["x-fal-webhook-request-id"] == submitted["request_id"]
        assert verify_signature(jwks, headers, body, now=time.time())
        tampered = body.replace(b'"OK"', b'"ERROR"')
        assert not verify_signature(jwks, headers, tampered, now=time.time())
    finally:
        serve.stop()
        receiver.httpd.shutdown()


def test_webhook_target_must_pass_the_ssrf_policy(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path).start()  # no allow-list: loopback targets are refused
    try:
        response = httpx.post(
            serve.url + ENDPOINT,
            params={"fal_webhook": "http://127.0.0.1:9/hook"},
            json={"prompt": "x"},
            headers=serve.headers(),
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    finally:
        serve.stop()
