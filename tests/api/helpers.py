"""Small helpers for API tests: images as data URIs, polling a request to completion."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
from PIL import Image, ImageDraw

ENDPOINT = "/bria/reimagine/3.2"
REQUESTS = "/bria/reimagine/requests"


def scene_png(size: tuple[int, int] = (320, 240)) -> bytes:
    """A drawn scene: sky, ground, a house; enough edges for canny and depth."""
    image = Image.new("RGB", size, (135, 190, 235))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle([0, h * 2 // 3, w, h], fill=(80, 140, 60))
    draw.rectangle([w // 3, h // 3, w * 2 // 3, h * 3 // 4], fill=(180, 80, 60))
    draw.polygon([(w // 3 - 10, h // 3), (w // 2, h // 8), (w * 2 // 3 + 10, h // 3)], fill=(90, 50, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def submit(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post(ENDPOINT, json=body, **kwargs)
    assert response.status_code == 200, response.text
    submitted: dict[str, Any] = response.json()
    return submitted


def wait_completed(client: httpx.Client, request_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"{REQUESTS}/{request_id}/status", params={"logs": "1"})
        assert response.status_code in (200, 202), response.text
        status: dict[str, Any] = response.json()
        if status["status"] == "COMPLETED":
            assert response.status_code == 200
            return status
        assert response.status_code == 202
        time.sleep(0.05)
    raise TimeoutError(f"request {request_id} did not complete")


def wait_running(client: httpx.Client, request_id: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(f"{REQUESTS}/{request_id}/status").json()
        if status["status"] != "IN_QUEUE":
            return
        time.sleep(0.02)
    raise TimeoutError(f"request {request_id} never started")
