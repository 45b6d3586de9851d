"""`reimagine requests ...` and `reimagine queue ...` as an operator runs them, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reimagine.jobs import ErrorType, JobStatus
from reimagine.queue import NewJob, Outcome, open_store
from tests.api.conftest import database_url


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reimagine.cli", *args], capture_output=True, text=True, check=False, timeout=120
    )


def _new(key_id: str = "k1") -> NewJob:
    return NewJob(id=str(uuid.uuid4()), key_id=key_id, endpoint="bria/reimagine/3.2", input={"prompt": "a cat"})


def test_requests_and_queue_commands(tmp_path: Path, store_flags: list[str]) -> None:
    data = ["--data-dir", str(tmp_path), *store_flags]
    store = open_store(database_url(tmp_path, store_flags))
    failed = store.enqueue(_new())[0].id
    job = store.claim("w", 30)
    assert job is not None
    store.complete(job.id, job.fence, Outcome.failed(ErrorType.INTERNAL_ERROR, "boom"))
    queued = store.enqueue(_new("k2"))[0].id

    listed = _cli("requests", "list", "--status", "FAILED", *data)
    assert listed.returncode == 0 and failed in listed.stdout and queued not in listed.stdout
    lines = _cli("requests", "list", "--json", "--since", "1h", *data).stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [queued, failed]

    shown = json.loads(_cli("requests", "show", failed, *data).stdout)
    assert shown["status"] == "FAILED" and shown["error"] == "boom" and shown["events"]

    stats = json.loads(_cli("queue", "stats", "--json", *data).stdout)
    assert stats["queued"] == 1 and stats["running"] == 0 and stats["oldest_queued_id"] == queued
    assert "queued: 1 (priority 0: 1)" in _cli("queue", "stats", *data).stdout

    assert _cli("queue", "pause", *data).returncode == 0 and store.admin.is_paused()
    assert "paused: since" in _cli("queue", "stats", *data).stdout
    assert _cli("queue", "resume", *data).returncode == 0 and not store.admin.is_paused()

    requeued = _cli("requests", "requeue", failed, *data)
    assert requeued.returncode == 0
    new_id = requeued.stdout.strip()
    new = store.get(new_id)
    assert new is not None and new.status == JobStatus.QUEUED
    refused = _cli("requests", "requeue", queued, *data)
    assert refused.returncode == 1 and "only a FAILED request" in refused.stderr

    cancelled = _cli("requests", "cancel", queued, *data)
    assert cancelled.returncode == 0 and "CANCELED" in cancelled.stdout
    assert _cli("requests", "show", "nope", *data).returncode == 1

    purged = _cli("requests", "purge", "--older-than", "0s", *data)
    assert purged.returncode == 0
    assert store.get(failed) is None and store.get(queued) is None and store.get(new_id) is not None
    store.close()


@pytest.mark.parametrize("command", [["requests", "list"], ["queue", "stats"], ["queue", "pause"]])
def test_admin_commands_refuse_a_missing_store(tmp_path: Path, command: list[str]) -> None:
    done = _cli(*command, "--data-dir", str(tmp_path / "typo"))
    assert done.returncode == 2 and "no database at" in done.stderr
    assert not (tmp_path / "typo").exists()
