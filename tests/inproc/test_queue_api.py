"""fal's queue API on the in-process app: submit, status, logs, stream, result, cancel, sync run, auth, 422."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from reimagine.api.state import app_state
from tests.inproc.conftest import wait_for

ENDPOINT = "/bria/reimagine/3.2"
REQUESTS = "/bria/reimagine/requests"


def _submit(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(ENDPOINT, json=body)
    assert response.status_code == 200, response.text
    submitted: dict[str, Any] = response.json()
    return submitted


def _completed(client: TestClient, request_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(f"{REQUESTS}/{request_id}/status", params={"logs": "1"}).json()
        return status if status["status"] == "COMPLETED" else None

    completed: dict[str, Any] = wait_for(done)
    return completed


def test_submit_answers_with_fal_urls_and_the_result_follows(client: TestClient) -> None:
    submitted = _submit(client, {"prompt": "a cat log=hello"})
    request_id = submitted["request_id"]
    assert submitted["status"] == "IN_QUEUE" and submitted["status_url"].endswith(f"/requests/{request_id}/status")
    status = _completed(client, request_id)
    assert status["error"] is None and status["metrics"]["inference_time"] is not None
    assert any(line["message"] == "hello" for line in status["logs"])
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 200 and result.headers["x-fal-request-id"] == request_id
    image = result.json()["image"]
    assert image["content_type"] == "image/png"
    assert client.get(image["url"].removeprefix("http://testserver")).status_code == 200


def test_the_status_stream_ends_with_completed(client: TestClient) -> None:
    request_id = _submit(client, {"prompt": "a cat"})["request_id"]
    states = []
    with client.stream("GET", f"{REQUESTS}/{request_id}/status/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line[6:])["status"])
    assert states[-1] == "COMPLETED" and set(states) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}


def test_a_sync_run_answers_with_the_result(client: TestClient) -> None:
    response = client.post(f"/run{ENDPOINT}", json={"prompt": "a cat", "sync_mode": True})
    assert response.status_code == 200, response.text
    assert response.json()["image"]["url"].startswith("data:image/png;base64,")


def test_a_running_request_is_cancelled_at_its_next_step(client: TestClient) -> None:
    request_id = _submit(client, {"prompt": "a cat sleep=0.1", "num_inference_steps": 50})["request_id"]
    wait_for(lambda: client.get(f"{REQUESTS}/{request_id}/status").json()["status"] == "IN_PROGRESS")
    cancel = client.put(f"{REQUESTS}/{request_id}/cancel")
    assert cancel.status_code == 202 and cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    status = _completed(client, request_id)
    assert status["error_type"] == "cancelled"
    assert client.get(f"{REQUESTS}/{request_id}").status_code == 499
    assert client.put(f"{REQUESTS}/{request_id}/cancel").json() == {"status": "ALREADY_COMPLETED"}


def test_another_keys_request_is_not_found(app_client: tuple[TestClient, str]) -> None:
    client, key = app_client
    submitted = client.post(ENDPOINT, json={"prompt": "a cat"}, headers={"Authorization": f"Key {key}"}).json()
    other = app_state(client.app).store.keys.create("other")  # type: ignore[arg-type]
    response = client.get(f"{REQUESTS}/{submitted['request_id']}/status", headers={"Authorization": f"Key {other}"})
    assert response.status_code == 404


def test_calls_without_a_key_are_401_with_fals_body(app_client: tuple[TestClient, str]) -> None:
    client, _key = app_client
    response = client.post(ENDPOINT, json={"prompt": "a cat"})
    assert response.status_code == 401 and "detail" in response.json()


def test_invalid_input_is_a_422_naming_the_field(client: TestClient) -> None:
    response = client.post(ENDPOINT, json={"prompt": "a cat", "depth_scale": 1.5})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "depth_scale"]
