"""The operator's view (`store.admin`), on SQLite and PostgreSQL: list, requeue, purge, stats, pause and resume."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from reimagine.jobs import ErrorType, JobStatus
from reimagine.queue import FileRow, JobStore, NewJob, Outcome


def _new(priority: int = 0, **kwargs: Any) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        key_id=kwargs.pop("key_id", "k1"),
        endpoint="bria/reimagine/3.2",
        input={"prompt": kwargs.pop("prompt", "a cat")},
        priority=priority,
        **kwargs,
    )


def _run(store: JobStore, outcome: Outcome, files: list[FileRow] | None = None) -> str:
    job = store.claim("w", 30)
    assert job is not None
    assert store.complete(job.id, job.fence, outcome, files=files)
    return job.id


def test_list_filters_by_status_key_and_age(store: JobStore) -> None:
    failed = store.enqueue(_new(key_id="a"))[0].id
    _run(store, Outcome.failed(ErrorType.INTERNAL_ERROR, "boom"))
    queued_a = store.enqueue(_new(key_id="a"))[0].id
    queued_b = store.enqueue(_new(key_id="b"))[0].id

    assert [j.id for j in store.admin.list_jobs()] == [queued_b, queued_a, failed]
    assert [j.id for j in store.admin.list_jobs(status=JobStatus.FAILED)] == [failed]
    assert [j.id for j in store.admin.list_jobs(key_id="b")] == [queued_b]
    assert [j.id for j in store.admin.list_jobs(key_id="a", status=JobStatus.QUEUED)] == [queued_a]
    assert store.admin.list_jobs(since=time.time() + 60) == []
    assert len(store.admin.list_jobs(limit=2)) == 2


def test_requeue_runs_a_failed_input_again_as_a_new_request(store: JobStore) -> None:
    store.enqueue(_new(prompt="poisoned one", webhook_url="https://hooks.example.com/x", priority=-10))
    failed = _run(store, Outcome.poisoned(3))
    again = store.admin.requeue(failed)
    assert again.id != failed and again.status == JobStatus.QUEUED
    assert again.input == {"prompt": "poisoned one"} and again.priority == -10
    assert again.webhook_url == "https://hooks.example.com/x"
    old = store.get(failed)
    assert old is not None and old.status == JobStatus.FAILED, "a finished request stays finished"
    assert any(again.id in e.data.get("message", "") for e in store.events(failed))
    assert any(failed in e.data.get("message", "") for e in store.events(again.id))

    with pytest.raises(ValueError, match="only a FAILED request"):
        store.admin.requeue(again.id)
    with pytest.raises(KeyError):
        store.admin.requeue("no-such-id")


def test_purge_deletes_finished_requests_and_returns_their_files(store: JobStore) -> None:
    store.enqueue(_new())
    done = _run(
        store, Outcome.succeeded({"ok": True}, 0.1), files=[FileRow("a" * 64 + ".png", "image", "image/png", 3)]
    )
    waiting = store.enqueue(_new())[0].id
    assert store.admin.purge(time.time() - 3600) == [], "finished less than an hour ago: kept"
    assert store.admin.purge(time.time() + 1) == ["a" * 64 + ".png"]
    assert store.get(done) is None and store.events(done) == []
    assert store.get(waiting) is not None, "a queued request is never purged"


def test_stats_counts_depth_by_priority_running_oldest_and_keys(store: JobStore) -> None:
    store.keys.create("team-a")
    first = store.enqueue(_new(key_id="a"))[0].id
    store.enqueue(_new(key_id="a", priority=-10))
    store.enqueue(_new(key_id="b"))
    running = store.claim("w", 30)
    assert running is not None and running.id == first
    stats = store.admin.stats()
    assert stats.queued_by_priority == {0: 1, -10: 1} and stats.queued == 2 and stats.running == 1
    assert stats.oldest_queued_id is not None and stats.oldest_queued_at is not None
    loads = {load.key_id: (load.queued, load.running) for load in stats.per_key}
    assert loads == {"a": (1, 1), "b": (1, 0)}
    assert stats.paused_at is None


def test_pause_lets_running_jobs_finish_and_starts_nothing_until_resumed(store: JobStore) -> None:
    store.enqueue(_new())
    held = store.claim("w", 30)
    assert held is not None
    assert store.admin.pause() and not store.admin.pause()
    assert store.admin.is_paused() and store.admin.stats().paused_at is not None
    waiting = store.enqueue(_new())[0].id  # submits still queue
    finished, claimed = store.complete_and_claim(held.id, held.fence, Outcome.succeeded({}, 0.1), owner="w", lease_s=30)
    assert finished and claimed is None, "the held job finishes; nothing new starts"
    assert store.claim("w", 30) is None
    assert store.admin.resume() and not store.admin.resume()
    resumed = store.claim("w", 30)
    assert resumed is not None and resumed.id == waiting
