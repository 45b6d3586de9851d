"""Cancel: a queued job at once, a running one at its next denoising step; then 400 ALREADY_COMPLETED."""

from __future__ import annotations

import time

import httpx

from tests.api.helpers import REQUESTS, submit, wait_completed, wait_running


def _wait_for_a_step(client: httpx.Client, request_id: str) -> None:
    """Until the job has logged a denoising step (it is running `generate`, not just claimed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = client.get(f"{REQUESTS}/{request_id}/status", params={"logs": "1"}).json()["logs"] or []
        if any(line["message"].startswith("Step ") for line in logs):
            return
        time.sleep(0.02)
    raise TimeoutError(f"request {request_id} logged no step")


def test_cancel_running_stops_at_next_step(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "sleep=0.1 long", "num_inference_steps": 50})["request_id"]
    wait_running(client, request_id)
    _wait_for_a_step(client, request_id)
    response = client.put(f"{REQUESTS}/{request_id}/cancel")
    assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
    status = wait_completed(client, request_id, timeout_s=5)
    assert status["error"] == "Request cancelled by the client."
    steps = [line["message"] for line in status["logs"] if line["message"].startswith("Step ")]
    assert len(steps) < 50  # it stopped early
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 499
    again = client.put(f"{REQUESTS}/{request_id}/cancel")
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}


def test_cancel_queued_is_instant(client: httpx.Client) -> None:
    blocker = submit(client, {"prompt": "sleep=0.05 blocker", "num_inference_steps": 30})["request_id"]
    wait_running(client, blocker)
    queued = submit(client, {"prompt": "waiting"})["request_id"]
    response = client.put(f"{REQUESTS}/{queued}/cancel")
    assert response.status_code == 202
    status = client.get(f"{REQUESTS}/{queued}/status")
    assert status.status_code == 200 and status.json()["status"] == "COMPLETED"
    assert client.get(f"{REQUESTS}/{queued}").status_code == 499
    client.put(f"{REQUESTS}/{blocker}/cancel")
    wait_completed(client, blocker)
