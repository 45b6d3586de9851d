"""Many teams on one store, over SQLite and PostgreSQL: fair turns, per-key limits, idempotency, listing, deletion,
usage, file lifecycles, key scopes and expiry (issue 16)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from reimagine.jobs import ErrorType, JobStatus
from reimagine.queue import JobStore, open_store
from reimagine.queue.db import engine_url
from reimagine.queue.keys import Scope
from reimagine.queue.models import (
    DeleteOutcome,
    FileRow,
    IdempotencyConflict,
    NewJob,
    Outcome,
    QueueFull,
)

Opener = Callable[..., JobStore]


class Clock:
    """The store's time, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database_url: str, clock: Clock) -> Any:
    opened = open_store(database_url, max_attempts=3, clock=clock)
    yield opened
    opened.close()


def _new(key_id: str = "a", **kwargs: Any) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        key_id=key_id,
        endpoint="bria/reimagine/3.2",
        input=kwargs.pop("input", {"prompt": "a cat"}),
        **kwargs,
    )


def _ok(**kwargs: Any) -> Outcome:
    return Outcome(JobStatus.SUCCEEDED, 200, {"image": {"url": "x"}}, inference_time_s=0.1, **kwargs)


# -- fair share and per-key concurrency ------------------------------------------------------------------------


def test_fair_share_a_single_job_starts_within_a_few_claims_of_a_200_job_batch(store: JobStore) -> None:
    batch = [store.enqueue(_new("a"))[0].id for _ in range(200)]
    lone, position = store.enqueue(_new("b"))
    # Its turn is right after the head of the queue, and its position says so.
    assert position <= 2
    claimed = [job.id for _ in range(3) if (job := store.claim("w", 30)) is not None]
    assert lone.id in claimed, "key b's job waited behind key a's batch"
    # Key a's own jobs still run in the order it submitted them.
    rest = [job.id for _ in range(10) if (job := store.claim("w", 30)) is not None]
    order = [job_id for job_id in claimed + rest if job_id != lone.id]
    assert order == batch[: len(order)]


def test_fair_share_alternates_between_two_batches_and_priority_still_wins(store: JobStore) -> None:
    for _ in range(5):
        store.enqueue(_new("a"))
    for _ in range(5):
        store.enqueue(_new("b"))
    urgent = store.enqueue(_new("c", priority=1))[0]
    keys = [job.key_id for _ in range(11) if (job := store.claim("w", 30)) is not None]
    assert keys[0] == "c"
    assert keys[1:] == ["a", "b"] * 5 or keys[1:] == ["b", "a"] * 5 or _alternates(keys[1:]), keys
    assert urgent.key_id == "c"


def _alternates(keys: list[str]) -> bool:
    # The first of a's turns was taken before b queued: after it, the two keys take turns.
    return all(keys.count(k) == 5 for k in ("a", "b")) and max(_runs(keys)) <= 2


def _runs(keys: list[str]) -> list[int]:
    runs, last, length = [], None, 0
    for key in keys:
        length = length + 1 if key == last else 1
        last = key
        runs.append(length)
    return runs


def test_a_keys_low_priority_backlog_does_not_delay_its_normal_requests(store: JobStore) -> None:
    for _ in range(50):
        store.enqueue(_new("a", priority=-10))
    others = [store.enqueue(_new("b"))[0].id for _ in range(5)]
    urgent = store.enqueue(_new("a"))[0]
    claimed = [job.id for _ in range(3) if (job := store.claim("w", 30)) is not None]
    assert urgent.id in claimed, "key a's normal request waited behind key b's five"
    assert claimed[0] == others[0]


def test_max_concurrent_keeps_the_rest_queued_without_blocking_other_keys(store: JobStore) -> None:
    limited = store.keys.create("team-a", max_concurrent=1).partition(":")[0]
    first, second = (store.enqueue(_new(limited))[0] for _ in range(2))
    other = store.enqueue(_new("b"))[0]
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == first.id
    nxt = store.claim("w", 30)
    assert nxt is not None and nxt.id == other.id, "the limited key's second job must wait, not block key b"
    assert store.claim("w", 30) is None
    waiting = store.get(second.id)
    assert waiting is not None and waiting.status == JobStatus.QUEUED
    assert store.complete(first.id, claimed.fence, _ok())
    after = store.claim("w", 30)
    assert after is not None and after.id == second.id


def test_fal_max_queue_length_counts_only_the_keys_own_waiting_jobs(store: JobStore) -> None:
    store.enqueue(_new("other"))
    store.enqueue(_new("a", max_queue_length=2))
    store.enqueue(_new("a", max_queue_length=2))
    with pytest.raises(QueueFull) as refused:
        store.enqueue(_new("a", max_queue_length=2))
    assert refused.value.per_key and refused.value.queued == 2
    assert store.enqueue(_new("a", max_queue_length=3))[0].status == JobStatus.QUEUED


# -- platform options ------------------------------------------------------------------------------------------


def test_no_retry_fails_on_the_first_worker_death_as_runner_disconnected(store: JobStore) -> None:
    plain, once = store.enqueue(_new())[0], store.enqueue(_new(no_retry=True))[0]
    assert store.claim("w", 30) is not None and store.claim("w", 30) is not None
    store.reclaim(owners=["w"])
    requeued, failed = store.get(plain.id), store.get(once.id)
    assert requeued is not None and requeued.status == JobStatus.QUEUED
    assert failed is not None and failed.status == JobStatus.FAILED
    assert failed.error_type == ErrorType.RUNNER_DISCONNECTED and failed.result_status == 503


def test_store_io_0_erases_the_input_once_finished(store: JobStore) -> None:
    kept, erased = store.enqueue(_new())[0], store.enqueue(_new(store_io=False))[0]
    for _ in range(2):
        job = store.claim("w", 30)
        assert job is not None and job.input == {"prompt": "a cat"}, "the worker still reads it"
        store.complete(job.id, job.fence, _ok())
    assert store.get(kept.id).input == {"prompt": "a cat"}  # type: ignore[union-attr]
    assert store.get(erased.id).input == {}  # type: ignore[union-attr]


def test_idempotency_key_same_body_same_job_other_body_422_and_24h_window(store: JobStore, clock: Clock) -> None:
    first = store.enqueue(_new(idempotency_key="k1", body_hash="h1"))[0]
    again = store.enqueue(_new(idempotency_key="k1", body_hash="h1"))[0]
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        store.enqueue(_new(idempotency_key="k1", body_hash="h2"))
    # Another key may use the same Idempotency-Key for its own request.
    assert store.enqueue(_new("b", idempotency_key="k1", body_hash="h2"))[0].id != first.id
    assert store.count_queued() == 2
    clock.now += 24 * 3600 + 1
    assert store.enqueue(_new(idempotency_key="k1", body_hash="h2"))[0].id != first.id


def test_job_files_expire_with_the_requests_lifecycle(store: JobStore, clock: Clock) -> None:
    job = store.enqueue(_new(file_ttl_s=60))[0]
    claimed = store.claim("w", 30)
    assert claimed is not None
    store.complete(job.id, claimed.fence, _ok(), files=[FileRow("img.png", "image", "image/png", 10)])
    assert store.file_expiry("img.png") == clock.now + 60
    store.add_upload("up.png", key_id="a", content_type="image/png", ttl_s=5)
    assert store.file_expiry("up.png") == clock.now + 5
    assert store.file_expiry("unknown.png") is None
    clock.now += 30
    assert store.expire_files() == ["up.png"]
    clock.now += 31
    assert store.expire_files() == ["img.png"]
    assert store.file_expiry("img.png") is None


# -- listing and deletion ----------------------------------------------------------------------------------------


def test_listing_is_the_keys_own_newest_first_with_a_cursor(store: JobStore) -> None:
    mine = [store.enqueue(_new("a"))[0].id for _ in range(5)]
    store.enqueue(_new("b"))
    page = store.list_jobs("a", None, 3, None)
    assert [job.id for job in page] == mine[::-1][:3]
    rest = store.list_jobs("a", None, 3, page[-1].seq)
    assert [job.id for job in rest] == mine[::-1][3:]
    job = store.claim("w", 30)
    assert job is not None
    running = store.list_jobs("a", (JobStatus.RUNNING,), 10, None)
    assert [j.id for j in running] == [job.id]


def test_delete_removes_a_finished_job_its_events_files_and_idempotency(store: JobStore) -> None:
    job = store.enqueue(_new(idempotency_key="k", body_hash="h"))[0]
    assert store.delete_job(job.id, "a") == (DeleteOutcome.NOT_FINISHED, [])
    claimed = store.claim("w", 30)
    assert claimed is not None
    store.complete(job.id, claimed.fence, _ok(), files=[FileRow("out.png", "image", "image/png", 10)])
    assert store.delete_job(job.id, "b") == (DeleteOutcome.NOT_FOUND, [])
    assert store.delete_job(job.id, "a") == (DeleteOutcome.DELETED, ["out.png"])
    assert store.get(job.id) is None and store.events(job.id) == []
    assert store.delete_job(job.id, "a") == (DeleteOutcome.NOT_FOUND, [])
    # The Idempotency-Key is free again.
    assert store.enqueue(_new(idempotency_key="k", body_hash="h2"))[0].id != job.id


# -- usage -------------------------------------------------------------------------------------------------------


def test_usage_per_key_and_day(store: JobStore, clock: Clock) -> None:
    key = store.keys.create("team-a")
    key_id = key.partition(":")[0]
    for gpu_s in (1.5, 2.5):
        job = store.enqueue(_new(key_id, input_bytes=100))[0]
        claimed = store.claim("w", 30)
        assert claimed is not None
        store.complete(job.id, claimed.fence, _ok(gpu_s=gpu_s, output_bytes=1000))
    failed = store.enqueue(_new(key_id, input_bytes=7))[0]
    assert store.request_cancel(failed.id, key_id) is not None
    clock.now += 24 * 3600
    job = store.enqueue(_new(key_id, input_bytes=1))[0]
    claimed = store.claim("w", 30)
    assert claimed is not None
    store.complete(job.id, claimed.fence, _ok(gpu_s=1.0, output_bytes=5))
    rows = store.usage.rows(key="team-a")
    assert [(r.images, r.failed, r.gpu_s, r.input_bytes, r.output_bytes) for r in rows] == [
        (2, 1, 4.0, 207, 2000),
        (1, 0, 1.0, 1, 5),
    ]
    assert rows[0].key_name == "team-a" and rows[1].day > rows[0].day
    assert store.usage.rows(key=key_id, since=rows[1].day) == rows[1:]
    (total,) = store.usage.totals()
    assert (total.key_name, total.images, total.gpu_s) == ("team-a", 3, 5.0)


# -- keys --------------------------------------------------------------------------------------------------------


def test_keys_have_scopes_expiry_and_revocation(store: JobStore, clock: Clock) -> None:
    admin = store.keys.create("ops")
    reader = store.keys.create("dash", scope=Scope.READ, expires_at=clock.now + 60)
    grant = store.keys.verify(reader)
    assert grant is not None and grant.scope == Scope.READ and grant.name == "dash"
    assert store.keys.verify(admin).scope == Scope.ADMIN  # type: ignore[union-attr]
    clock.now += 61
    assert store.keys.verify(reader) is None
    assert store.keys.revoke(admin.partition(":")[0])
    assert store.keys.verify(admin) is None
    listed = {key.name: key for key in store.keys.all()}
    assert listed["dash"].scope == Scope.READ and listed["dash"].expires_at is not None


# -- migrations --------------------------------------------------------------------------------------------------


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    from reimagine.queue.db import _MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    engine = sa.create_engine(engine_url(url))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)
    engine.dispose()


def test_jobs_queued_before_the_upgrade_keep_their_order_and_usage_survives_0006(
    database_url: str, clock: Clock
) -> None:
    _migrate(database_url, "0002")
    engine = sa.create_engine(engine_url(database_url))
    with engine.begin() as conn:
        for n in range(2):
            conn.execute(
                sa.text(
                    "INSERT INTO jobs (id, key_id, endpoint, status, priority, input, created_at)"
                    " VALUES (:id, 'old', 'e', 'QUEUED', 0, '{}', 1.0)"
                ),
                {"id": f"old-{n}"},
            )
    engine.dispose()
    store = open_store(database_url, clock=clock)
    try:
        newer = store.enqueue(_new("b"))[0]
        claimed = [job.id for _ in range(3) if (job := store.claim("w", 30)) is not None]
        assert claimed[:2] == ["old-0", "old-1"] or claimed == ["old-0", newer.id, "old-1"], claimed
        for job_id in claimed:
            running = store.get(job_id)
            assert running is not None
            store.complete(job_id, running.fence, _ok(gpu_s=1.0, output_bytes=10))
        before = store.usage.rows()
        assert sum(row.images for row in before) == 3
    finally:
        store.close()
    _migrate(database_url, "0005", down=True)
    _migrate(database_url, "head")
    store = open_store(database_url, clock=clock)
    try:
        assert store.usage.rows() == before
    finally:
        store.close()
