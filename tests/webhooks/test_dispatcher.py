"""The dispatcher against a real SQLite outbox and loopback receivers: retries, give-up, SSRF refusal, isolation."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from reimagine.errors import FetchRefused
from reimagine.jobs import JobStatus
from reimagine.metrics import Metrics
from reimagine.queue import JobStore
from reimagine.webhooks import WebhookDispatcher, WebhookKey, verify_signature
from tests.webhooks.conftest import Receiver, finish_job, settings_for


def _run_until(dispatcher: WebhookDispatcher, done: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Run the dispatcher loop until `done()`; returns whether the loop was still alive (it must never exit)."""

    async def main() -> bool:
        task = asyncio.create_task(dispatcher.run())
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        alive = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return alive

    return asyncio.run(main())


def _outbox(store: JobStore, job_id: str) -> dict[str, Any]:
    (row,) = store.outbox.deliveries(job_id)
    return row


def _refuse_private(url: str) -> None:
    """A stand-in for the fetcher's policy with an empty allow-list: loopback is private, so refused."""
    if httpx.URL(url).host in {"127.0.0.1", "localhost", "::1"}:
        raise FetchRefused("fal_webhook", f"{url} resolves to a private address")


def test_delivery_retried_until_accepted_then_never_again(
    tmp_path: Path, store: JobStore, receiver_factory: type[Receiver]
) -> None:
    receiver = receiver_factory(500, 500, 200)
    settings = settings_for(tmp_path, webhook_max_attempts=5)
    key = WebhookKey.load_or_create(settings)
    metrics = Metrics(store)
    dispatcher = WebhookDispatcher(store.outbox, settings, key, metrics=metrics)
    job = finish_job(store, receiver.url)

    assert _run_until(dispatcher, lambda: _outbox(store, job.id)["delivered_at"] is not None)
    assert _run_until(dispatcher, lambda: False, timeout_s=1.0)  # a delivered row is never sent again

    row = _outbox(store, job.id)
    assert (row["attempts"], row["last_status"], row["gave_up_at"]) == (3, 200, None)
    assert len(receiver.attempts) == 3
    headers, body = receiver.attempts[-1]
    assert body == row["body"].encode()  # the stored bytes, exactly
    assert headers["content-type"] == "application/json"
    assert headers["x-fal-webhook-request-id"] == job.id
    assert headers["x-fal-webhook-user-id"] == settings.webhook_user_id
    assert verify_signature(key.jwks(), headers, body, now=time.time())
    payload = json.loads(body)
    assert (payload["request_id"], payload["status"]) == (job.id, "OK")
    assert store.get(job.id).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]
    rendered = metrics.render()[0].decode()
    assert 'reimagine_webhook_deliveries_total{result="retry"} 2.0' in rendered
    assert 'reimagine_webhook_deliveries_total{result="delivered"} 1.0' in rendered


def test_delivery_gives_up_after_max_attempts(
    tmp_path: Path, store: JobStore, receiver_factory: type[Receiver]
) -> None:
    receiver = receiver_factory(503)
    settings = settings_for(tmp_path, webhook_max_attempts=3, webhook_window_s=0.3)
    dispatcher = WebhookDispatcher(store.outbox, settings, WebhookKey.load_or_create(settings))
    job = finish_job(store, receiver.url)

    assert _run_until(dispatcher, lambda: _outbox(store, job.id)["gave_up_at"] is not None)
    assert _run_until(dispatcher, lambda: False, timeout_s=0.8)
    row = _outbox(store, job.id)
    assert (row["attempts"], row["last_status"], row["delivered_at"]) == (3, 503, None)
    assert len(receiver.attempts) == 3
    assert store.get(job.id).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]


def test_refused_target_is_never_contacted(tmp_path: Path, store: JobStore, receiver_factory: type[Receiver]) -> None:
    receiver = receiver_factory(200)
    settings = settings_for(tmp_path)
    metrics = Metrics(store)
    dispatcher = WebhookDispatcher(
        store.outbox, settings, WebhookKey.load_or_create(settings), check_target=_refuse_private, metrics=metrics
    )
    job = finish_job(store, receiver.url)

    assert _run_until(dispatcher, lambda: _outbox(store, job.id)["gave_up_at"] is not None)
    row = _outbox(store, job.id)
    # Retried like any failed delivery (issue 13: a host whose DNS answer changes must not lose its webhook).
    assert row["attempts"] == settings.webhook_max_attempts and row["last_error"].startswith("refused:")
    assert receiver.attempts == []
    rendered = metrics.render()[0].decode()
    assert f'reimagine_webhook_deliveries_total{{result="refused"}} {settings.webhook_max_attempts - 1}.0' in rendered
    assert 'reimagine_webhook_deliveries_total{result="gave_up"} 1.0' in rendered


def test_target_resolving_to_a_forbidden_address_for_a_while_still_gets_its_webhook(
    tmp_path: Path, store: JobStore, receiver_factory: type[Receiver]
) -> None:
    # Issue 13 item 9: a host that passed the policy at submit resolves to a forbidden address when the job ends
    # (DNS change, rebinding). It was dropped after one attempt; now it is retried, and delivered once it is fine.
    receiver = receiver_factory(200)
    settings = settings_for(tmp_path)
    refusals = [2]

    def refuse_twice(url: str) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise FetchRefused("fal_webhook", "host resolves to a private address")

    key = WebhookKey.load_or_create(settings)
    dispatcher = WebhookDispatcher(store.outbox, settings, key, check_target=refuse_twice)
    job = finish_job(store, receiver.url)
    assert _run_until(dispatcher, lambda: _outbox(store, job.id)["delivered_at"] is not None)
    assert _outbox(store, job.id)["attempts"] == 3 and len(receiver.attempts) == 1


def test_real_ssrf_policy_refuses_loopback(tmp_path: Path, store: JobStore, receiver_factory: type[Receiver]) -> None:
    fetcher = pytest.importorskip("reimagine.fetcher")
    receiver = receiver_factory(200)
    settings = settings_for(tmp_path)  # empty allow-list
    dispatcher = WebhookDispatcher(
        store.outbox,
        settings,
        WebhookKey.load_or_create(settings),
        check_target=lambda url: fetcher.check_url(url, settings),
    )
    job = finish_job(store, receiver.url)
    assert asyncio.run(dispatcher.deliver_once(_due(store)[0])) == "refused"
    row = _outbox(store, job.id)
    assert receiver.attempts == [] and row["gave_up_at"] is None and row["last_error"].startswith("refused:")


def test_redirects_are_not_followed(tmp_path: Path, store: JobStore) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})

    settings = settings_for(tmp_path, webhook_max_attempts=1)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    dispatcher = WebhookDispatcher(store.outbox, settings, WebhookKey.load_or_create(settings), client=client)
    job = finish_job(store, "https://hooks.example.com/in")
    assert asyncio.run(dispatcher.deliver_once(_due(store)[0])) == "gave_up"
    assert seen == ["https://hooks.example.com/in"]
    assert _outbox(store, job.id)["last_status"] == 302


def test_transport_error_is_retried(tmp_path: Path, store: JobStore) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = settings_for(tmp_path)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    dispatcher = WebhookDispatcher(store.outbox, settings, WebhookKey.load_or_create(settings), client=client)
    job = finish_job(store, "https://hooks.example.com/in")
    before = time.time()
    assert asyncio.run(dispatcher.deliver_once(_due(store)[0])) == "retry"
    row = _outbox(store, job.id)
    assert row["last_error"].startswith("ConnectError") and row["next_attempt_at"] > before


class _BrokenStore:
    """The real store, except that recording an attempt fails (database gone mid-delivery)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.failures = 0

    def due_webhooks(self, now: float, limit: int = 20, lock_s: float = 60.0) -> list[Any]:
        return self.store.outbox.due_webhooks(now, limit, lock_s)

    def record_webhook_attempt(self, delivery_id: int, **kwargs: Any) -> None:
        self.failures += 1
        raise RuntimeError("database is gone")


@pytest.mark.parametrize("failure", ["store", "policy", "client"])
def test_dispatcher_errors_never_touch_the_job(
    tmp_path: Path, store: JobStore, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken_policy(url: str) -> None:
        calls.append(url)
        raise RuntimeError("policy bug")

    def broken_transport(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        raise ValueError("client bug")

    settings = settings_for(tmp_path)
    broken = _BrokenStore(store)
    dispatcher = WebhookDispatcher(
        broken if failure == "store" else store.outbox,
        settings,
        WebhookKey.load_or_create(settings),
        client=httpx.AsyncClient(transport=httpx.MockTransport(broken_transport if failure == "client" else _ok)),
        check_target=broken_policy if failure == "policy" else (lambda url: None),
    )
    job = finish_job(store, "https://hooks.example.com/in")
    with caplog.at_level(logging.ERROR, logger="reimagine.webhooks"):
        assert _run_until(dispatcher, lambda: bool(calls) or broken.failures > 0)
        assert _run_until(dispatcher, lambda: False, timeout_s=0.6)  # the loop survives and keeps polling
    assert any(record.exc_info for record in caplog.records)
    finished = store.get(job.id)
    assert finished is not None and finished.status == JobStatus.SUCCEEDED and finished.completed_at == job.completed_at
    # The row stays locked (not lost): another attempt is made once the lock expires.
    assert _outbox(store, job.id)["delivered_at"] is None


def test_kick_is_safe_from_any_thread_and_before_run(tmp_path: Path, store: JobStore) -> None:
    settings = settings_for(tmp_path)
    dispatcher = WebhookDispatcher(store.outbox, settings, WebhookKey.load_or_create(settings))
    dispatcher.kick()  # not running yet: a no-op

    async def main() -> None:
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.05)
        await asyncio.to_thread(dispatcher.kick)  # the supervisor's pump thread calls it like this
        dispatcher.kick()
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    dispatcher.kick()  # stopped: a no-op again


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


def _due(store: JobStore) -> list[Any]:
    return store.outbox.due_webhooks(time.time() + 1, 10, 60.0)


def test_unresolvable_target_is_retried_not_refused(tmp_path: Path, store: JobStore) -> None:
    def refuse_everything(url: str) -> None:
        raise FetchRefused("fal_webhook", "cannot resolve host")

    settings = settings_for(tmp_path)
    dispatcher = WebhookDispatcher(
        store.outbox, settings, WebhookKey.load_or_create(settings), check_target=refuse_everything
    )
    # A 70-character label fails in the resolver's IDNA step, locally: no DNS server needed.
    job = finish_job(store, f"https://{'a' * 70}.example/hook")
    assert asyncio.run(dispatcher.deliver_once(_due(store)[0])) == "retry"
    row = _outbox(store, job.id)
    assert row["gave_up_at"] is None and row["last_error"].startswith("unresolvable:")
