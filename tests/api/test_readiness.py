"""Readiness waits for a warm worker; jobs submitted during warm-up queue and then run; links honour proxies."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.api.helpers import ENDPOINT, submit, wait_completed
from tests.conftest import ServeProcess


def test_ready_only_once_the_model_is_loaded(tmp_path: Path, store_flags: list[str]) -> None:
    serve = ServeProcess(tmp_path, "--generate", "tests.fakes:make_slow_loading_generate", *store_flags)
    serve.start(wait_ready=False)
    try:
        live = None
        for _ in range(100):
            try:
                live = httpx.get(serve.url + "/health/live", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert live is not None and live.status_code == 200
        ready = httpx.get(serve.url + "/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "starting"
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            request_id = submit(client, {"prompt": "during warm-up"})["request_id"]
            assert client.get(f"/bria/reimagine/requests/{request_id}/status").json()["status"] == "IN_QUEUE"
            serve.wait_ready()
            assert wait_completed(client, request_id)["error"] is None
    finally:
        serve.stop()


def test_api_only_replica_is_ready_when_the_store_answers(tmp_path: Path, store_flags: list[str]) -> None:
    serve = ServeProcess(tmp_path, "--workers", "0", *store_flags).start()
    try:
        body = httpx.get(serve.url + "/health/ready").json()
        assert body["status"] == "ready" and body["workers"]["expected"] == 0
    finally:
        serve.stop()


def test_links_follow_forwarded_headers(client: httpx.Client) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.com"}
    submitted = client.post(ENDPOINT, json={"prompt": "x"}, headers=headers).json()
    assert submitted["response_url"].startswith("https://images.example.com/bria/reimagine/requests/")
    wait_completed(client, submitted["request_id"])
    image_url = client.get(submitted["response_url"].replace("https://images.example.com", "")).json()["image"]["url"]
    assert image_url.startswith("https://images.example.com/files/")


def test_long_prompt_without_truncation_is_refused_at_submit(tmp_path: Path) -> None:
    # The tiny preset's tokenizer: the API counts tokens itself, without torch.
    serve = ServeProcess(tmp_path, "--model", "tiny", "--workers", "0").start()
    try:
        long_prompt = " ".join(["a red cat"] * 100)
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            deadline = time.monotonic() + 10
            while True:  # the tokenizer loads in the background at start-up
                response = client.post(ENDPOINT, json={"prompt": long_prompt, "truncate_prompt": False})
                if response.status_code == 422 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert response.status_code == 422
            detail = response.json()["detail"][0]
            assert detail["loc"] == ["body", "prompt"] and "128" in detail["msg"]
            assert client.post(ENDPOINT, json={"prompt": long_prompt}).status_code == 200
    finally:
        serve.stop()
