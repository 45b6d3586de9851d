"""Per-key submit rate limit and global queue depth both answer 429 with Retry-After; polling is never limited."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api.helpers import ENDPOINT, REQUESTS, submit
from tests.conftest import ServeProcess


def test_rate_limit_and_queue_depth(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path, "--submit-rate-per-min", "3", "--max-queue-depth", "100", "--workers", "0")
    serve.start()
    try:
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            ids = [submit(client, {"prompt": "x"})["request_id"] for _ in range(3)]
            limited = client.post(ENDPOINT, json={"prompt": "x"})
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            for _ in range(30):
                assert client.get(f"{REQUESTS}/{ids[0]}/status").status_code == 202
    finally:
        serve.stop()

    depth = ServeProcess(tmp_path / "depth", "--max-queue-depth", "2", "--workers", "0").start()
    try:
        with httpx.Client(base_url=depth.url, headers=depth.headers(), timeout=30) as client:
            submit(client, {"prompt": "x"})
            submit(client, {"prompt": "x"})
            full = client.post(ENDPOINT, json={"prompt": "x"})
            assert full.status_code == 429 and "retry-after" in full.headers
    finally:
        depth.stop()


def test_strict_inputs_reject_unknown_fields(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path, "--strict-inputs", "--workers", "0").start()
    try:
        response = httpx.post(serve.url + ENDPOINT, json={"prompt": "x", "num_images": 2}, headers=serve.headers())
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "num_images"]
    finally:
        serve.stop()
