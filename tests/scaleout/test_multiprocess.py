"""Scale-out end to end: one PostgreSQL, two API replicas, three workers, one worker killed mid-job.

Every process shares one local data directory (the single-machine layout of docs/deployment.md); the commands are
the ones the docs give. The fake generate keeps it fast; the store is checked directly for exactly-once results.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from reimagine.queue import open_store
from tests.conftest import ServeProcess
from tests.scaleout.conftest import LEASE_FLAGS, WorkerProcess, create_key

pytestmark = pytest.mark.slow

ENDPOINT = "/bria/reimagine/3.2"
REQUESTS = "/bria/reimagine/requests"


def _stream(api: ServeProcess, request_id: str, out: list[dict[str, Any]]) -> None:
    """Collect the SSE status stream of one request until COMPLETED."""
    url = f"{api.url}{REQUESTS}/{request_id}/status/stream"
    with httpx.stream("GET", url, params={"logs": "1"}, headers=api.headers(), timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if out[-1]["status"] == "COMPLETED":
                    return


def test_scaleout_two_apis_three_workers_survive_a_killed_worker(pg_url: str, tmp_path: Path) -> None:
    key = create_key(pg_url)
    apis = [ServeProcess(tmp_path, "--workers", "0", "--database-url", pg_url, *LEASE_FLAGS) for _ in range(2)]
    workers = [WorkerProcess(pg_url, tmp_path) for _ in range(3)]
    store = open_store(pg_url)
    try:
        for api in apis:
            api.start()
            api.key = key
        for worker in workers:
            worker.start()
        clients = [httpx.Client(base_url=api.url, headers=api.headers(), timeout=30) for api in apis]

        # The victim runs about 3 s (20 steps), long enough to be killed mid-job; it is first in line.
        victim = clients[0].post(ENDPOINT, json={"prompt": "victim sleep=0.15", "seed": 1}).json()["request_id"]
        streams: dict[str, list[dict[str, Any]]] = {victim: []}
        # Watched on the *other* replica: its progress comes from a worker process via PostgreSQL.
        watchers = [threading.Thread(target=_stream, args=(apis[1], victim, streams[victim]), daemon=True)]
        deadline = time.monotonic() + 30
        while (job := store.get(victim)) is None or job.lease_owner is None:
            assert time.monotonic() < deadline, "victim never started"
            time.sleep(0.02)
        owner_pid = int(job.lease_owner.split("/")[1])
        (killed,) = [w for w in workers if w.pid == owner_pid]
        watchers[0].start()
        while not [e for e in store.events(victim) if e.kind == "progress"]:
            assert time.monotonic() < deadline, "victim never made progress"
            time.sleep(0.02)

        ids = [victim]
        for n in range(49):
            body = {"prompt": f"job {n} sleep=0.005", "seed": n}
            ids.append(clients[n % 2].post(ENDPOINT, json=body).json()["request_id"])
        other = ids[1]
        streams[other] = []
        watchers.append(threading.Thread(target=_stream, args=(apis[1], other, streams[other]), daemon=True))
        watchers[-1].start()
        killed.signal(signal.SIGKILL)

        deadline = time.monotonic() + 90
        for n, request_id in enumerate(ids):
            while True:
                status = clients[n % 2].get(f"{REQUESTS}/{request_id}/status").json()
                if status["status"] == "COMPLETED":
                    assert status.get("error") is None, status
                    break
                assert time.monotonic() < deadline, f"{request_id} stuck: {status}"
                time.sleep(0.05)
        result = clients[1].get(f"{REQUESTS}/{victim}").json()
        image = clients[1].get(result["image"]["url"].replace(apis[0].url, apis[1].url))
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG", "files shared through the data dir"

        jobs = {request_id: store.get(request_id) for request_id in ids}
        assert all(job is not None and job.status.value == "SUCCEEDED" for job in jobs.values())
        for request_id in ids:
            finished = [e for e in store.events(request_id) if e.kind == "status" and e.data["status"] == "SUCCEEDED"]
            assert len(finished) == 1, f"{request_id} completed {len(finished)} times"
        victim_job = jobs[victim]
        assert victim_job is not None and victim_job.attempts == 2, "the killed job was re-run once"
        assert victim_job.lease_owner is None
        assert all(job is not None and job.attempts == 1 for rid, job in jobs.items() if rid != victim)
        assert killed.proc is not None and killed.proc.poll() == -signal.SIGKILL

        for watcher in watchers:
            watcher.join(timeout=30)
        for request_id, seen in streams.items():
            assert seen and seen[-1]["status"] == "COMPLETED", (request_id, seen[-3:])
            logs = [entry["message"] for event in seen for entry in event.get("logs") or []]
            assert any(message.startswith("Step ") for message in logs), (request_id, logs)
        assert any(event["status"] == "IN_PROGRESS" for event in streams[victim])
        victim_logs = [entry["message"] for event in streams[victim] for entry in event.get("logs") or []]
        assert any("re-queued" in message for message in victim_logs), victim_logs

        # A cancel sent to one replica stops a job that a worker runs for the other (the worker reads the flag).
        doomed = clients[0].post(ENDPOINT, json={"prompt": "doomed sleep=0.2"}).json()["request_id"]
        while (running := store.get(doomed)) is None or running.status.value != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancel = clients[1].put(f"{REQUESTS}/{doomed}/cancel")
        assert cancel.status_code == 202 and cancel.json() == {"status": "CANCELLATION_REQUESTED"}
        while (status := clients[0].get(f"{REQUESTS}/{doomed}/status").json())["status"] != "COMPLETED":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        cancelled = store.get(doomed)
        assert cancelled is not None and cancelled.status.value == "CANCELED" and cancelled.error_type == "cancelled"
        for client in clients:
            client.close()
    finally:
        for worker in workers:
            worker.stop()
        for api in apis:
            api.stop()
        store.close()
