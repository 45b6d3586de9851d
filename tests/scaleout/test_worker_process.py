"""`reimagine worker` against PostgreSQL: instant wake-up by NOTIFY, graceful drain on SIGTERM."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

from reimagine.jobs import JobStatus
from reimagine.queue import JobStore, NewJob, open_store
from tests.scaleout.conftest import WorkerProcess


def _enqueue(store: JobStore, prompt: str) -> str:
    job, _ = store.enqueue(
        NewJob(
            id=str(uuid.uuid4()),
            key_id="k",
            endpoint="bria/reimagine/3.2",
            input={"prompt": prompt, "num_inference_steps": 20},
            base_url="http://127.0.0.1:9",
        )
    )
    return job.id


def _wait_status(store: JobStore, job_id: str, status: JobStatus, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job is not None and job.status == status:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{job_id} never reached {status}: {store.get(job_id)}")


def test_worker_wakes_on_notify_and_drains_on_sigterm(pg_url: str, tmp_path: Path) -> None:
    store = open_store(pg_url)
    worker = WorkerProcess(pg_url, tmp_path).start()
    try:
        # Idle worker, job queued 0.3 s into its wait: NOTIFY wakes it at once; the 1 s backstop poll would
        # only claim it about 0.7 s later.
        warm = _enqueue(store, "warm up")
        _wait_status(store, warm, JobStatus.SUCCEEDED)
        delays = []
        for _ in range(3):
            time.sleep(0.3)  # idle again, waiting
            job_id = _enqueue(store, "quick")
            _wait_status(store, job_id, JobStatus.SUCCEEDED)
            job = store.get(job_id)
            assert job is not None and job.started_at is not None
            delays.append(job.started_at - job.created_at)
        assert max(delays) < 0.5, delays

        running = _enqueue(store, "sleep=0.1")  # 20 steps: about 2 s
        _wait_status(store, running, JobStatus.RUNNING)
        waiting = _enqueue(store, "next one")
        job = store.get(running)
        assert job is not None and job.lease_owner is not None
        assert f"/{worker.pid}/" in job.lease_owner
        worker.signal(signal.SIGTERM)
        assert worker.proc is not None and worker.proc.wait(timeout=20) == 0, "".join(worker.output)
        finished = store.get(running)
        assert finished is not None and finished.status == JobStatus.SUCCEEDED, "the current job is finished"
        untouched = store.get(waiting)
        assert untouched is not None and untouched.status == JobStatus.QUEUED and untouched.attempts == 0
        assert any("on device cpu" in line for line in worker.output), "".join(worker.output)
    finally:
        worker.stop()
        store.close()
