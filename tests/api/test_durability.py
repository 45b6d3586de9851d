"""Crash safety: kill -9 of serve loses nothing and doubles nothing; a job that kills its worker is poisoned."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from reimagine.queue import open_store
from tests.api.conftest import database_url
from tests.api.helpers import REQUESTS, submit, wait_completed, wait_running
from tests.conftest import ServeProcess

pytestmark = pytest.mark.slow


def _worker_pids(serve_pid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == serve_pid:
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill9_of_serve_loses_nothing_and_doubles_nothing(tmp_path: Path, store_flags: list[str]) -> None:
    first = ServeProcess(tmp_path, *store_flags).start()
    headers = first.headers()
    with httpx.Client(base_url=first.url, headers=headers, timeout=30) as client:
        running = submit(client, {"prompt": "sleep=0.1 running", "num_inference_steps": 30})["request_id"]
        wait_running(client, running)
        time.sleep(0.5)
        queued = [submit(client, {"prompt": f"queued {i}"})["request_id"] for i in range(5)]
    assert first.proc is not None
    workers = _worker_pids(first.proc.pid)
    assert workers, "serve spawned no worker process"
    first.kill9()
    # The spawned worker must not outlive serve by more than 5 s.
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "orphaned worker left behind"

    second = ServeProcess(tmp_path, *store_flags, port=first.port).start()
    try:
        with httpx.Client(base_url=second.url, headers=headers, timeout=30) as client:
            for request_id in [running, *queued]:
                status = wait_completed(client, request_id, timeout_s=60)
                assert status["error"] is None, status
                assert client.get(f"{REQUESTS}/{request_id}").status_code == 200
            attempts = client.get(f"{REQUESTS}/{running}/status", params={"logs": "1"}).json()
            assert any("re-queued" in line["message"] for line in attempts["logs"])
    finally:
        second.stop()
    store = open_store(database_url(tmp_path, store_flags))
    try:
        with store.db.engine.connect() as db:
            rows = db.execute(sa.text("SELECT id, status, attempts FROM jobs")).all()
            assert len(rows) == 6 and all(status == "SUCCEEDED" for _, status, _ in rows)
            assert dict((job_id, attempts) for job_id, _, attempts in rows)[running] == 2
            # Exactly once: a single terminal status event per job.
            for job_id, _, _ in rows:
                terminal = db.execute(
                    sa.text(
                        "SELECT COUNT(*) FROM events WHERE job_id = :id AND kind = 'status' AND data LIKE '%SUCCEEDED%'"
                    ),
                    {"id": job_id},
                ).scalar_one()
                assert terminal == 1
    finally:
        store.close()


def test_job_that_kills_its_worker_is_poisoned(tmp_path: Path, store_flags: list[str]) -> None:
    serve = ServeProcess(tmp_path, "--max-attempts", "3", *store_flags).start()
    try:
        with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=30) as client:
            request_id = submit(client, {"prompt": "crash"})["request_id"]
            status = wait_completed(client, request_id, timeout_s=60)
            assert status["error_type"] == "poisoned"
            assert client.get(f"{REQUESTS}/{request_id}").status_code == 500
            # The service survived: the next job runs.
            after = submit(client, {"prompt": "fine"})["request_id"]
            assert wait_completed(client, after, timeout_s=60)["error"] is None
    finally:
        serve.stop()
