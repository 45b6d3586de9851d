"""Issue 13 items 3, 4, 5: graceful shutdown was less graceful than kill -9. After SIGTERM the worker kept claiming
(with a backlog, shutdown always took the full grace period and killed a job mid-way), three graceful restarts
during one long job poisoned it, and a sync run in flight got a 500 and its job cancelled.

Now: claim nothing new, finish the running job within the grace period or give it back without counting an
attempt, exit; a sync run either finishes or gets a retryable 503 while its job stays queued and completes."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from reimagine.jobs import JobStatus
from reimagine.queue import open_store
from tests.api.helpers import ENDPOINT, REQUESTS, submit, wait_completed, wait_running
from tests.conftest import ServeProcess

STEPS = 20  # the fewest the schema allows


def _serve(data_dir: Path, *flags: str, key: str | None = None) -> ServeProcess:
    serve = ServeProcess(data_dir, *flags).start()
    if key is not None:
        serve.key = key  # printed on the first start only
    return serve


def _sigterm(serve: ServeProcess) -> float:
    """SIGTERM, and the seconds until the process is gone."""
    assert serve.proc is not None
    started = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    serve.proc.wait(timeout=120)
    return time.monotonic() - started


def _jobs(data_dir: Path, ids: list[str]) -> list[Any]:
    """The jobs as the store holds them while no server runs."""
    store = open_store(f"sqlite:///{(data_dir / 'reimagine.db').resolve()}")
    try:
        return [store.get(job_id) for job_id in ids]
    finally:
        store.close()


def test_sigterm_with_a_backlog_claims_nothing_new_and_exits_within_the_grace_period(tmp_path: Path) -> None:
    grace_s = 8.0
    serve = _serve(tmp_path, "--drain-grace-s", str(grace_s))
    with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
        body = {"prompt": "sleep=0.05 a", "num_inference_steps": STEPS}  # 1 s a job
        ids = [submit(client, body)["request_id"] for _ in range(50)]
        wait_running(client, ids[0])
    took_s = _sigterm(serve)
    jobs = _jobs(tmp_path, ids)
    statuses = [job.status for job in jobs]
    done = statuses.count(JobStatus.SUCCEEDED)
    print(f"SIGTERM with 50 queued: exit after {took_s:.1f} s (grace {grace_s:.0f} s); {done} done")
    assert took_s < grace_s  # the running job (1 s) finished, nothing new was claimed
    assert statuses.count(JobStatus.SUCCEEDED) <= 2 and statuses[0] == JobStatus.SUCCEEDED
    assert set(statuses) <= {JobStatus.SUCCEEDED, JobStatus.QUEUED}
    assert all(job.attempts == 0 for job in jobs if job.status == JobStatus.QUEUED)

    again = _serve(tmp_path, "--workers", "2", key=serve.key)
    try:
        with httpx.Client(base_url=again.url, headers=again.headers(), timeout=30) as client:
            for job_id in ids:
                assert wait_completed(client, job_id, timeout_s=120)["error"] is None
    finally:
        again.stop()


def test_graceful_restarts_never_poison_a_long_job(tmp_path: Path) -> None:
    # With --max-attempts 1 a single counted attempt would poison the job at the next start.
    flags = ("--max-attempts", "1", "--drain-grace-s", "3")
    serve = _serve(tmp_path, *flags)
    key = serve.key
    with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
        job_id = submit(client, {"prompt": "sleep=0.25 a", "num_inference_steps": STEPS})["request_id"]  # 5 s
        wait_running(client, job_id)
    for restart in range(3):
        took_s = _sigterm(serve)
        (job,) = _jobs(tmp_path, [job_id])
        print(f"restart {restart + 1}: exit after {took_s:.1f} s, job {job.status.value}, attempts {job.attempts}")
        assert took_s < 3.0
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)  # given back, the attempt undone
        serve = _serve(tmp_path, *flags, key=key)
        if restart < 2:
            with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
                wait_running(client, job_id)
    try:
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            status = wait_completed(client, job_id, timeout_s=60)
            assert status["error"] is None
            assert client.get(f"{REQUESTS}/{job_id}").status_code == 200
    finally:
        serve.stop()


def _run_in_background(serve: ServeProcess, body: dict[str, Any]) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []

    def run() -> None:
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=60) as http:
            answers.append(http.post("/run" + ENDPOINT, json=body))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def _running_job(serve: ServeProcess) -> str:
    """The id of the one job the server has started (the sync run's)."""
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
        while time.monotonic() < deadline:
            listed = client.get("/bria/reimagine/requests", params={"status": "IN_PROGRESS"})
            if listed.status_code == 200 and listed.json().get("requests"):
                return str(listed.json()["requests"][0]["request_id"])
            time.sleep(0.05)
    raise TimeoutError("the sync run's job never started")


def test_a_sync_run_in_flight_finishes_within_the_grace_period(tmp_path: Path) -> None:
    serve = _serve(tmp_path, "--drain-grace-s", "10")
    thread, answers = _run_in_background(serve, {"prompt": "sleep=0.1 a", "num_inference_steps": STEPS})  # 2 s
    _running_job(serve)
    took_s = _sigterm(serve)
    thread.join()
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["image"]["url"]
    print(f"sync run in flight, 10 s grace: answered 200; exit after {took_s:.1f} s")


def test_a_sync_run_that_cannot_finish_gets_a_retryable_503_and_its_job_completes_later(tmp_path: Path) -> None:
    serve = _serve(tmp_path, "--drain-grace-s", "3")
    key = serve.key
    thread, answers = _run_in_background(serve, {"prompt": "sleep=0.5 a", "num_inference_steps": STEPS})  # 10 s
    job_id = _running_job(serve)
    took_s = _sigterm(serve)
    thread.join()
    answer = answers[0]
    print(f"sync run in flight, 3 s grace: answered {answer.status_code}; exit after {took_s:.1f} s")
    assert answer.status_code == 503, answer.text + "".join(serve.output[-40:])
    assert answer.headers["retry-after"] and answer.headers["x-fal-request-id"] == job_id
    assert answer.json()["error_type"] == "shutting_down" and answer.json()["request_id"] == job_id
    (job,) = _jobs(tmp_path, [job_id])
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)  # not cancelled, not counted

    again = _serve(tmp_path, key=key)
    try:
        with httpx.Client(base_url=again.url, headers=again.headers(), timeout=30) as client:
            assert wait_completed(client, job_id, timeout_s=60)["error"] is None
            assert client.get(f"{REQUESTS}/{job_id}").status_code == 200
    finally:
        again.stop()


def test_a_worker_stuck_in_a_step_is_killed_at_the_end_of_the_grace_period_and_its_job_given_back(
    tmp_path: Path,
) -> None:
    # A 6 s step cannot notice the drain in a 3 s grace period: serve kills the worker, and gives the job back itself.
    serve = _serve(tmp_path, "--drain-grace-s", "3", "--max-attempts", "1")
    with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
        job_id = submit(client, {"prompt": "sleep=6 a", "num_inference_steps": STEPS})["request_id"]
        wait_running(client, job_id)
    took_s = _sigterm(serve)
    (job,) = _jobs(tmp_path, [job_id])
    print(f"worker stuck in a step, 3 s grace: exit after {took_s:.1f} s, job {job.status.value}")
    assert took_s < 3.0 + 2.0
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
