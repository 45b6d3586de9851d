"""Per-key submit rate limit and global queue depth both answer 429 with Retry-After; polling is never limited."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.api.helpers import ENDPOINT, REQUESTS, submit
from tests.conftest import ServeProcess


def test_rate_limit_and_queue_depth(tmp_path: Path, new_store_flags: Callable[[], list[str]]) -> None:
    serve = ServeProcess(
        tmp_path, "--submit-rate-per-min", "3", "--max-queue-depth", "100", "--workers", "0", *new_store_flags()
    )
    serve.start()
    try:
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            ids = [submit(client, {"prompt": "x"})["request_id"] for _ in range(3)]
            limited = client.post(ENDPOINT, json={"prompt": "x"})
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error_type"] == limited.headers["x-fal-error-type"] == "rate_limited"
            for _ in range(30):
                assert client.get(f"{REQUESTS}/{ids[0]}/status").status_code == 202
    finally:
        serve.stop()

    depth = ServeProcess(tmp_path / "depth", "--max-queue-depth", "2", "--workers", "0", *new_store_flags()).start()
    try:
        with httpx.Client(base_url=depth.url, headers=depth.headers(), timeout=30) as client:
            submit(client, {"prompt": "x"})
            submit(client, {"prompt": "x"})
            full = client.post(ENDPOINT, json={"prompt": "x"})
            assert full.status_code == 429 and "retry-after" in full.headers
            assert full.json()["error_type"] == full.headers["x-fal-error-type"] == "queue_full"
    finally:
        depth.stop()


def test_strict_inputs_reject_unknown_fields(tmp_path: Path, store_flags: list[str]) -> None:
    serve = ServeProcess(tmp_path, "--strict-inputs", "--workers", "0", *store_flags).start()
    try:
        response = httpx.post(serve.url + ENDPOINT, json={"prompt": "x", "num_images": 2}, headers=serve.headers())
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "num_images"]
    finally:
        serve.stop()


def test_oversized_request_body_is_413(tmp_path: Path, store_flags: list[str]) -> None:
    serve = ServeProcess(tmp_path, "--max-request-bytes", "100000", "--workers", "0", *store_flags).start()
    try:
        big = {"prompt": "x", "canny_image_url": "data:image/png;base64," + "A" * 200_000}
        response = httpx.post(serve.url + ENDPOINT, json=big, headers=serve.headers())
        assert response.status_code == 413
        assert "storage API" in response.json()["detail"]

        # A chunked body without Content-Length is cut off as well.
        def chunks() -> Iterator[bytes]:
            yield b'{"prompt": "x", "canny_image_url": "'
            for _ in range(50):
                yield b"A" * 10_000
            yield b'"}'

        chunked = httpx.post(serve.url + ENDPOINT, content=chunks(), headers=serve.headers())
        assert chunked.status_code == 413
        assert httpx.post(serve.url + ENDPOINT, json={"prompt": "x"}, headers=serve.headers()).status_code == 200
    finally:
        serve.stop()
