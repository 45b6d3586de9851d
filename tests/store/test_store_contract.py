"""The job store contract, run over SQLite and PostgreSQL (conftest parametrizes `store` and `database_url`)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from reimagine.jobs import JobStatus, can_transition
from reimagine.queue import (
    CancelOutcome,
    EventKind,
    InvalidTransition,
    JobStore,
    LeaseState,
    NewJob,
    Outcome,
    open_store,
)
from tests.fakes import Clock

Opener = Callable[..., JobStore]


def _new(priority: int = 0, **kwargs: Any) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        key_id=kwargs.pop("key_id", "k1"),
        endpoint="bria/reimagine/3.2",
        input={"prompt": "a cat"},
        priority=priority,
        **kwargs,
    )


def _ok() -> Outcome:
    return Outcome(JobStatus.SUCCEEDED, 200, {"image": {"url": "x"}}, inference_time_s=0.1)


def _statuses(store: JobStore, job_id: str) -> list[str]:
    return [e.data["status"] for e in store.events(job_id) if e.kind == "status"]


# -- enqueue, position, priority -----------------------------------------------------------------------------


def test_store_enqueue_reports_position_and_claims_by_priority_then_age(store: JobStore) -> None:
    first, pos_first = store.enqueue(_new())
    second, pos_second = store.enqueue(_new())
    urgent, pos_urgent = store.enqueue(_new(priority=1))
    assert (pos_first, pos_second, pos_urgent) == (0, 1, 0)
    found = store.get_with_position(second.id)
    assert found is not None and found[1] == 2
    assert store.count_queued() == 3
    claimed = [store.claim("w", 30) for _ in range(3)]
    assert [job.id for job in claimed if job] == [urgent.id, first.id, second.id]
    assert store.claim("w", 30) is None
    assert store.count_by_status() == {"RUNNING": 3}
    running = store.get(first.id)
    assert running is not None and running.status == JobStatus.RUNNING
    assert running.attempts == 1 and running.lease_owner == "w" and running.fence == 1


def test_store_claims_are_exclusive_under_concurrent_claimers(store: JobStore, open_for: Opener) -> None:
    ids = {store.enqueue(_new(priority=i % 3))[0].id for i in range(60)}
    stores = [open_for() for _ in range(3)]
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def claimer(n: int) -> None:
        own = stores[n % 3]
        start.wait()
        while (job := own.claim(f"w{n}", 30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"
    assert store.count_by_status() == {"RUNNING": 60}


# -- leases, heartbeats, reclaim, poison, fencing --------------------------------------------------------------


def test_store_heartbeat_renews_lease_until_lost(store: JobStore) -> None:
    job, _ = store.enqueue(_new())
    claimed = store.claim("w", 0.5)
    assert claimed is not None
    assert store.heartbeat(job.id, claimed.fence, 30) == LeaseState.HELD
    assert store.lease_state(job.id, claimed.fence) == LeaseState.HELD
    renewed = store.get(job.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > time.time() + 20
    assert store.heartbeat(job.id, claimed.fence + 1, 30) == LeaseState.LOST


def test_store_reclaims_expired_leases_and_poisons_after_max_attempts(store: JobStore, clock: Clock) -> None:
    job, _ = store.enqueue(_new())
    first = store.claim("w1", 30)
    assert first is not None
    assert store.reclaim(expired_before=clock()) == []  # not expired yet
    clock.advance(31)
    assert store.reclaim(expired_before=clock()) == [job.id]
    requeued = store.get(job.id)
    assert requeued is not None and requeued.status == JobStatus.QUEUED and requeued.lease_owner is None
    assert store.heartbeat(job.id, first.fence, 30) == LeaseState.LOST
    second = store.claim("w2", 30)
    assert second is not None and second.attempts == 2 and second.fence == first.fence + 1
    # max_attempts=2: the second worker death poisons the job instead of re-queueing it.
    assert store.reclaim(owners=["w2"]) == [job.id]
    poisoned = store.get(job.id)
    assert poisoned is not None and poisoned.status == JobStatus.FAILED and poisoned.error_type == "poisoned"
    assert poisoned.result_status == 500
    assert _statuses(store, job.id) == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "FAILED"]


def test_store_gives_back_a_drained_workers_job_without_counting_the_attempt(store: JobStore) -> None:
    # Issue 13 item 4: graceful restarts (max_attempts=2 here) must never poison a job, however many there are.
    job, _ = store.enqueue(_new())
    for _restart in range(3):
        claimed = store.claim("w1", 30)
        assert claimed is not None and claimed.attempts == 1
        assert store.give_back(["w1"]) == [job.id]
        given = store.get(job.id)
        assert given is not None and given.status == JobStatus.QUEUED and given.attempts == 0
    assert store.give_back(["w1"]) == []  # nothing running any more
    assert _statuses(store, job.id) == ["QUEUED"] + ["RUNNING", "QUEUED"] * 3


def test_store_fencing_stops_a_stale_worker_from_committing(store: JobStore, clock: Clock) -> None:
    job, _ = store.enqueue(_new(webhook_url="http://127.0.0.1:9/hook"))
    stale = store.claim("stale", 1)
    assert stale is not None
    clock.advance(2)
    store.reclaim(expired_before=clock())
    fresh = store.claim("fresh", 30)
    assert fresh is not None and fresh.id == job.id
    before = store.get(job.id)
    events_before = store.events(job.id)
    assert store.complete(job.id, stale.fence, _ok()) is False
    assert store.lease_state(job.id, stale.fence) == LeaseState.LOST
    assert store.get(job.id) == before, "a stale complete changes nothing"
    assert store.events(job.id) == events_before
    assert store.outbox.deliveries(job.id) == []
    assert store.requeue(job.id, stale.fence) is False
    assert store.complete(job.id, fresh.fence, _ok()) is True
    done = store.get(job.id)
    assert done is not None and done.status == JobStatus.SUCCEEDED and done.attempts == 2
    assert len(store.outbox.deliveries(job.id)) == 1
    assert store.complete(job.id, fresh.fence, _ok()) is False, "a job completes once"


def test_store_complete_and_claim_finishes_one_job_and_takes_the_next_in_one_write(store: JobStore) -> None:
    first, _ = store.enqueue(_new())
    second, _ = store.enqueue(_new())
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == first.id
    finished, following = store.complete_and_claim(first.id, claimed.fence, _ok(), owner="w", lease_s=30)
    assert finished is True and following is not None and following.id == second.id
    assert following.status == JobStatus.RUNNING and following.lease_owner == "w" and following.attempts == 1
    assert _statuses(store, first.id) == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert _statuses(store, second.id) == ["QUEUED", "RUNNING"]
    # The first job's completion is written before the next job's start.
    assert store.events(first.id)[-1].id < store.events(second.id)[-1].id
    # With nothing left to take, it only completes; a stale fence completes nothing but may still claim.
    assert store.complete_and_claim(second.id, following.fence, _ok(), owner="w", lease_s=30) == (True, None)
    third, _ = store.enqueue(_new())
    stale, taken = store.complete_and_claim(second.id, following.fence, _ok(), owner="w", lease_s=30)
    assert stale is False and taken is not None and taken.id == third.id


def test_store_requeue_gives_a_claimed_job_back(store: JobStore) -> None:
    job, _ = store.enqueue(_new())
    claimed = store.claim("w", 30)
    assert claimed is not None
    assert store.requeue(job.id, claimed.fence) is True
    again = store.claim("w", 30)
    assert again is not None and again.id == job.id and again.attempts == 1


# -- cancel ----------------------------------------------------------------------------------------------------


def test_store_cancel_queued_running_terminal_and_other_key(store: JobStore) -> None:
    queued, _ = store.enqueue(_new())
    assert store.request_cancel(queued.id, "other") == CancelOutcome.NOT_FOUND
    assert store.request_cancel("no-such-id", None) == CancelOutcome.NOT_FOUND
    assert store.request_cancel(queued.id, "k1") == CancelOutcome.CANCELED
    cancelled = store.get(queued.id)
    assert cancelled is not None and cancelled.status == JobStatus.CANCELED and cancelled.result_status == 499
    assert store.request_cancel(queued.id, "k1") == CancelOutcome.ALREADY_COMPLETED

    running, _ = store.enqueue(_new())
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == running.id
    assert store.request_cancel(running.id, None) == CancelOutcome.CANCELLATION_REQUESTED
    assert store.heartbeat(running.id, claimed.fence, 30) == LeaseState.CANCEL
    assert store.lease_state(running.id, claimed.fence) == LeaseState.CANCEL
    # A cancel-requested job whose worker dies ends cancelled, not re-run.
    assert store.reclaim(owners=["w"]) == [running.id]
    after = store.get(running.id)
    assert after is not None and after.status == JobStatus.CANCELED


# -- events ----------------------------------------------------------------------------------------------------


def test_store_events_are_ordered_per_job_and_globally(store: JobStore) -> None:
    start = store.last_event_id()
    a, _ = store.enqueue(_new())
    b, _ = store.enqueue(_new())
    store.add_log(a.id, "hello", "WARN")
    store.add_event(b.id, EventKind.PROGRESS, {"step": 1, "total": 4})
    events_a = store.events(a.id)
    assert [e.kind for e in events_a] == ["status", "log"]
    assert events_a[1].data["message"] == "hello" and events_a[1].data["level"] == "WARN"
    assert store.events(a.id, after_id=events_a[0].id) == events_a[1:]
    every = store.events_since(start)
    assert [e.job_id for e in every] == [a.id, b.id, a.id, b.id]
    assert [e.id for e in every] == sorted(e.id for e in every)
    assert store.events_since(start, limit=2) == every[:2]
    assert store.last_event_id() == every[-1].id


# -- webhook outbox ----------------------------------------------------------------------------------------------


def test_store_webhook_outbox_due_lock_and_record(store: JobStore, open_for: Opener) -> None:
    job, _ = store.enqueue(_new(webhook_url="http://127.0.0.1:9/hook"))
    claimed = store.claim("w", 30)
    assert claimed is not None and store.complete(job.id, claimed.fence, _ok())
    now = time.time()
    due = store.outbox.due_webhooks(now)
    assert [d.job_id for d in due] == [job.id] and due[0].attempts == 0
    assert '"status":"OK"' in due[0].body
    assert open_for().outbox.due_webhooks(now) == [], "locked for the replica that took it"
    store.outbox.record_webhook_attempt(due[0].id, status=503, error="busy", next_attempt_at=now + 100)
    assert store.outbox.due_webhooks(now) == []
    retry = store.outbox.due_webhooks(now + 101)
    assert len(retry) == 1 and retry[0].attempts == 1
    store.outbox.record_webhook_attempt(retry[0].id, status=200, error=None, next_attempt_at=None)
    assert store.outbox.due_webhooks(now + 10_000) == []
    (row,) = store.outbox.deliveries(job.id)
    assert row["delivered_at"] is not None and row["gave_up_at"] is None and row["attempts"] == 2


def test_store_webhook_outbox_gives_up(store: JobStore) -> None:
    job, _ = store.enqueue(_new(webhook_url="http://127.0.0.1:9/hook"))
    store.request_cancel(job.id, None)
    (due,) = store.outbox.due_webhooks(time.time())
    store.outbox.record_webhook_attempt(due.id, status=None, error="refused", next_attempt_at=None)
    (row,) = store.outbox.deliveries(job.id)
    assert row["gave_up_at"] is not None and row["delivered_at"] is None and row["last_error"] == "refused"


# -- keys, files, deadlines, retention -------------------------------------------------------------------------


def test_store_keys_create_verify_revoke(store: JobStore) -> None:
    assert store.keys.count() == 0
    key = store.keys.create("ci")
    key_id, _, secret = key.partition(":")
    grant = store.keys.verify(key)
    assert grant is not None and grant.id == key_id
    assert store.keys.verify(f"{key_id}:wrong") is None
    assert store.keys.verify("garbage") is None
    assert [k.name for k in store.keys.all()] == ["ci"]
    assert store.keys.revoke(key_id) is True
    assert store.keys.revoke(key_id) is False
    assert store.keys.verify(key) is None
    assert store.keys.all()[0].revoked_at is not None


def test_store_start_deadline_fails_queued_jobs(store: JobStore) -> None:
    late, _ = store.enqueue(_new(start_deadline_at=time.time() - 1))
    fine, _ = store.enqueue(_new(start_deadline_at=time.time() + 600))
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == fine.id
    expired = store.get(late.id)
    assert expired is not None and expired.status == JobStatus.FAILED
    assert expired.result_status == 504 and expired.error_type == "request_timeout"
    other, _ = store.enqueue(_new(start_deadline_at=time.time() - 1))
    store.expire_start_deadlines()
    gone = store.get(other.id)
    assert gone is not None and gone.status == JobStatus.FAILED


def test_store_files_and_delete_expired(store: JobStore) -> None:
    old, _ = store.enqueue(_new())
    keep, _ = store.enqueue(_new())
    store.add_file("aa/one.png", job_id=old.id, kind="image", content_type="image/png", size=10)
    store.add_file("aa/one.png", job_id=old.id, kind="image", content_type="image/png", size=10)  # idempotent
    store.add_file("bb/two.png", job_id=keep.id, kind="image", content_type="image/png", size=20)
    store.request_cancel(old.id, None)
    assert store.delete_expired(time.time() - 60) == []
    assert store.delete_expired(time.time() + 1) == ["aa/one.png"]
    assert store.get(old.id) is None and store.events(old.id) == []
    assert store.get(keep.id) is not None


def test_store_delete_expired_works_through_a_backlog_in_batches(store: JobStore, clock: Clock) -> None:
    expired = [store.enqueue(_new())[0] for _ in range(7)]
    for n, job in enumerate(expired):
        store.add_file(f"cc/{n}.png", job_id=job.id, kind="image", content_type="image/png", size=1)
        store.request_cancel(job.id, None)
    clock.advance(1)
    cutoff = clock()
    clock.advance(1)
    fresh, _ = store.enqueue(_new())
    store.request_cancel(fresh.id, None)
    keys = store.delete_expired(cutoff, batch=3)
    assert sorted(keys) == sorted(f"cc/{n}.png" for n in range(7))
    assert all(store.get(job.id) is None and store.events(job.id) == [] for job in expired)
    assert store.get(fresh.id) is not None, "finished after the cut-off: kept"


def test_store_status_reads_never_read_the_input(store: JobStore) -> None:
    # Issue 12 item 2: an input may be megabytes of data URI; status polls and streams must not pay for it.
    job, _ = store.enqueue(_new())
    assert job.input == {"prompt": "a cat"}
    with store.db.write() as conn:
        conn.changed(sa.text("UPDATE job_inputs SET input = 'not json' WHERE job_id = :id"), {"id": job.id})
    found = store.get_with_position(job.id)
    assert found is not None and found[0].id == job.id and found[1] == 0
    snapshot = store.status_snapshot(job.id)
    assert snapshot is not None and snapshot[0].status == JobStatus.QUEUED and len(snapshot[2]) == 1
    result = store.get_result(job.id)
    assert result is not None and result.result_body is None
    with pytest.raises(json.JSONDecodeError):
        store.get(job.id)  # the full read does parse it: only workers and tools make it


# -- transitions ---------------------------------------------------------------------------------------------


def test_store_every_status_change_is_one_the_transition_table_allows(store: JobStore, clock: Clock) -> None:
    succeeded, _ = store.enqueue(_new(priority=9))
    claimed = store.claim("w", 30)
    assert claimed is not None and store.complete(succeeded.id, claimed.fence, _ok())
    cancelled_queued, _ = store.enqueue(_new())
    store.request_cancel(cancelled_queued.id, None)
    timed_out, _ = store.enqueue(_new(start_deadline_at=clock() - 1))
    store.expire_start_deadlines()
    given_back, _ = store.enqueue(_new(priority=9))
    claimed = store.claim("w", 30)
    assert claimed is not None and store.requeue(given_back.id, claimed.fence)
    claimed = store.claim("w", 30)  # given_back again, its worker dies twice: re-queued, then poisoned
    assert claimed is not None and claimed.id == given_back.id
    clock.advance(31)
    store.reclaim(expired_before=clock())
    assert store.claim("w2", 30) is not None
    store.reclaim(owners=["w2"])
    cancelled_running, _ = store.enqueue(_new())
    claimed = store.claim("w3", 30)
    assert claimed is not None and claimed.id == cancelled_running.id
    store.request_cancel(cancelled_running.id, None)
    store.reclaim(owners=["w3"])  # its worker died after the cancel was asked: cancelled, not re-run

    paths = {
        job.id: _statuses(store, job.id)
        for job in (succeeded, cancelled_queued, timed_out, given_back, cancelled_running)
    }
    assert list(paths.values()) == [
        ["QUEUED", "RUNNING", "SUCCEEDED"],
        ["QUEUED", "CANCELED"],
        ["QUEUED", "FAILED"],
        ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "FAILED"],
        ["QUEUED", "RUNNING", "CANCELED"],
    ]
    for job_id, path in paths.items():
        steps = list(zip(path, path[1:], strict=False))
        assert all(can_transition(JobStatus(old), JobStatus(new)) for old, new in steps), path
        job = store.get(job_id)
        assert job is not None and job.status == path[-1]


def test_store_refuses_a_status_change_the_transition_table_forbids(store: JobStore) -> None:
    job, _ = store.enqueue(_new(webhook_url="http://127.0.0.1:9/hook"))
    claimed = store.claim("w", 30)
    assert claimed is not None
    before, events_before = store.get(job.id), store.events(job.id)
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        with pytest.raises(InvalidTransition):
            store.complete(job.id, claimed.fence, Outcome(status, 200, {}))
        with pytest.raises(InvalidTransition):
            store.complete_and_claim(job.id, claimed.fence, Outcome(status, 200, {}), owner="w", lease_s=30)
    assert store.get(job.id) == before and store.events(job.id) == events_before, "nothing was written"
    assert store.outbox.deliveries(job.id) == []
    assert store.complete(job.id, claimed.fence, _ok())
    # A terminal job moves nowhere.
    done, events_done = store.get(job.id), store.events(job.id)
    assert store.complete(job.id, claimed.fence, Outcome.cancelled()) is False
    assert store.request_cancel(job.id, None) == CancelOutcome.ALREADY_COMPLETED
    assert store.requeue(job.id, claimed.fence) is False
    assert store.reclaim(owners=["w"]) == []
    assert store.get(job.id) == done and store.events(job.id) == events_done


# -- migrations ------------------------------------------------------------------------------------------------


def test_store_migrations_idempotent_and_safe_concurrently(database_url: str, open_for: Opener) -> None:
    errors: list[BaseException] = []

    def open_and_close() -> None:
        try:
            open_store(database_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    store = open_for()
    store.db.migrate()  # once more, on an up-to-date schema
    with store.db.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert len(versions) == 1
    job, _ = store.enqueue(_new())
    assert store.get(job.id) is not None


# -- notifications (PostgreSQL only) ---------------------------------------------------------------------------


def test_store_notifies_listeners_on_postgres(database_url: str, store: JobStore) -> None:
    from reimagine.queue.notify import QUEUED, open_listener

    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no NOTIFY; its callers poll")
    received: list[str] = []
    arrived = threading.Condition()

    def on_notify(payload: str) -> None:
        with arrived:
            received.append(payload)
            arrived.notify_all()

    def wait_for(payload: str) -> None:
        with arrived:
            assert arrived.wait_for(lambda: payload in received, timeout=5), received

    listener = open_listener(database_url, on_notify)
    try:
        wait_for(QUEUED)  # the initial "look at the store" after connecting
        received.clear()
        job, _ = store.enqueue(_new())
        wait_for(job.id)
        wait_for(QUEUED)
        received.clear()
        claimed = store.claim("w", 30)
        assert claimed is not None
        wait_for(job.id)
        assert QUEUED not in received
        received.clear()
        store.request_cancel(job.id, None)
        wait_for(job.id)
    finally:
        listener.stop()


def test_store_listener_reconnects_after_losing_its_connection(database_url: str, store: JobStore) -> None:
    from reimagine.queue.notify import QUEUED, open_listener

    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no NOTIFY; its callers poll")
    received: list[str] = []
    arrived = threading.Condition()

    def on_notify(payload: str) -> None:
        with arrived:
            received.append(payload)
            arrived.notify_all()

    listener = open_listener(database_url, on_notify)
    try:
        with arrived:
            assert arrived.wait_for(lambda: QUEUED in received, timeout=5)
            received.clear()
        with store.db.engine.begin() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )
            ).all()
        assert killed, "the listener's connection was found"
        with arrived:  # after reconnecting, the caller is told to look at the store once
            assert arrived.wait_for(lambda: QUEUED in received, timeout=10), received
        job, _ = store.enqueue(_new())
        with arrived:
            assert arrived.wait_for(lambda: job.id in received, timeout=5), received
    finally:
        listener.stop()
