"""Start-up and failure (issue 15): each way `serve` used to start half-broken now fails fast, or says why.

- a model that cannot load: `serve` exits 2 before spawning anything; a network failure is named as one;
- workers that fail to start N times in a row: submits get 503 `runner_scheduling_failure` until one is up, and so
  do the sync runs already waiting (their jobs stay queued);
- a busy port: `serve` exits at once, before creating a key or spawning a worker;
- an API-only replica with --offline or HF_HUB_OFFLINE never contacts the Hub for its tokenizer.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import ENDPOINT, REQUESTS, wait_completed
from tests.conftest import REPO, ServeProcess, free_port


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "reimagine.cli", "serve", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_a_model_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    done = _serve("--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--model", str(missing))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "Traceback" not in done.stderr
    assert "Created the first API key" not in done.stdout
    assert not (tmp_path / "data").exists(), "nothing was created before the check"


def test_serve_offline_names_the_cache_and_what_to_do(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf")}
    done = _serve("--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--offline", env=env)
    assert done.returncode == 2
    assert "not in the Hugging Face cache" in done.stderr and "reimagine models pull" in done.stderr


def test_an_unreachable_hub_is_named_as_a_network_failure(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there: connection refused
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HUB_OFFLINE": ""}
    done = _serve("--data-dir", str(tmp_path / "data"), "--port", str(free_port()), env=env)
    assert done.returncode == 2
    assert "network error" in done.stderr and "cannot be reached" in done.stderr
    assert "config.json" not in done.stderr


def test_serve_on_a_busy_port_exits_before_doing_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _serve("--data-dir", str(tmp_path), "--port", str(port), "--model", "tiny", "--workers", "1")
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Created the first API key" not in done.stdout and "spawned" not in done.stderr
    assert not (tmp_path / "reimagine.db").exists()


def test_workers_that_cannot_start_make_submits_fail_until_one_is_up(tmp_path: Path, store_flags: list[str]) -> None:
    serve = ServeProcess(
        tmp_path, "--generate", "tests.fakes:make_unloadable_generate", "--worker-start-failures", "2", *store_flags
    )
    serve.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            while True:
                assert time.monotonic() < deadline, "".join(serve.output)
                try:
                    ready = client.get("/health/ready")
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if ready.json()["status"] == "unavailable":
                    break
                time.sleep(0.1)
            assert ready.status_code == 503 and "fake weights are missing" in ready.json()["detail"]
            refused = client.post(ENDPOINT, json={"prompt": "a cat"}, headers=serve.headers())
            assert refused.status_code == 503
            assert refused.json()["error_type"] == "runner_scheduling_failure"
            assert "fake weights are missing" in refused.json()["detail"]
            assert refused.headers["x-fal-error-type"] == "runner_scheduling_failure"
            sync = client.post("/run" + ENDPOINT, json={"prompt": "a cat"}, headers=serve.headers())
            assert sync.status_code == 503 and sync.json()["error_type"] == "runner_scheduling_failure"

            (tmp_path / "weights-ok").touch()
            serve.wait_ready(timeout_s=60)
            assert client.post(ENDPOINT, json={"prompt": "a cat"}, headers=serve.headers()).status_code == 200
    finally:
        serve.stop()


def test_a_sync_run_waiting_when_the_workers_start_failing_gets_a_503_and_its_job_stays_queued(
    tmp_path: Path, store_flags: list[str]
) -> None:
    # The worker's load waits for `fail-now`: the sync run is queued while the service still takes work.
    serve = ServeProcess(
        tmp_path,
        "--generate", "tests.fakes:make_generate_unloadable_once_told", "--worker-start-failures", "2",
        *store_flags,
    )  # fmt: skip
    serve.start(wait_ready=False)
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while serve.key is None or not _answers(client, "/health/live"):
                assert time.monotonic() < deadline, "".join(serve.output)
                time.sleep(0.1)
            answers: list[httpx.Response] = []

            def run() -> None:
                # Far under the sync timeout (600 s), far over what the workers' two failed starts take.
                with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=60) as http:
                    try:
                        answers.append(http.post("/run" + ENDPOINT, json={"prompt": "a cat"}))
                    except httpx.ReadTimeout:
                        pass  # no answer: asserted below

            thread = threading.Thread(target=run)
            thread.start()
            job_id = _queued_job(client, serve)
            (tmp_path / "fail-now").touch()
            thread.join()

            assert answers, "the sync run was still waiting after 60 s:\n" + "".join(serve.output[-40:])
            (answer,) = answers
            assert answer.status_code == 503, answer.text + "".join(serve.output[-40:])
            body = answer.json()
            assert body["error_type"] == "runner_scheduling_failure" == answer.headers["x-fal-error-type"]
            assert answer.headers["retry-after"] and answer.headers["x-fal-request-id"] == job_id == body["request_id"]
            assert "fake weights are missing" in body["detail"] and "stays queued" in body["detail"]
            assert body["status_url"] in body["detail"] and body["response_url"] in body["detail"]
            # Not cancelled: a queue client polling it still sees it waiting.
            client.headers.update(serve.headers())
            status = client.get(body["status_url"])
            assert status.status_code == 202 and status.json()["status"] == "IN_QUEUE"

            (tmp_path / "weights-ok").touch()  # a worker comes up and runs it
            wait_completed(client, job_id, timeout_s=45)
            assert client.get(body["response_url"]).json()["image"]["url"]
    finally:
        serve.stop()


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        client.get(path)
    except httpx.HTTPError:
        return False
    return True


def _queued_job(client: httpx.Client, serve: ServeProcess) -> str:
    """The id of the one request waiting in the queue (the sync run's)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = client.get(REQUESTS, params={"status": "IN_QUEUE"}, headers=serve.headers())
        if listed.status_code == 200 and listed.json()["requests"]:
            return str(listed.json()["requests"][0]["request_id"])
        time.sleep(0.05)
    raise TimeoutError("the sync run was never queued:\n" + "".join(serve.output))


class _FakeHub:
    """A TCP listener that only counts connections: the Hub an air-gapped replica must never call."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def fake_hub() -> Iterator[_FakeHub]:
    hub = _FakeHub()
    yield hub
    hub.sock.close()


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE"])
def test_api_only_replica_offline_never_calls_the_hub(tmp_path: Path, fake_hub: _FakeHub, how: str) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": ""}
    flags = ["--workers", "0", "--generate", ""]
    if how == "--offline":
        flags.append("--offline")
    else:
        env["HF_HUB_OFFLINE"] = "1"
    serve = ServeProcess(tmp_path / "data", *flags, env=env).start()
    try:
        deadline = time.monotonic() + 30
        while not any("tokenizer not available to the API" in line for line in serve.output):
            assert time.monotonic() < deadline, "".join(serve.output)
            time.sleep(0.05)
        assert fake_hub.connections == 0
    finally:
        serve.stop()
