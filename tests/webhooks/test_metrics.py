"""Metrics: queue gauges counted by the store at scrape time, job histograms, one registry per app."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

from fastapi.testclient import TestClient

from reimagine.api.app import create_app
from reimagine.api.state import app_state
from reimagine.jobs import JobStatus
from reimagine.metrics import Metrics
from reimagine.queue import JobStore, NewJob
from reimagine.queue.keys import KeyGrant, Scope
from reimagine.webhooks import WebhookKey, verify_signature
from tests.webhooks.conftest import finish_job, settings_for


def test_metrics_render_queue_gauges_and_job_observations(store: JobStore) -> None:
    finished = finish_job(store, "https://hooks.example.com/in")
    store.enqueue(NewJob(id=str(uuid.uuid4()), key_id="k", endpoint="e", input={}))
    metrics = Metrics(store)
    Metrics(store)  # a second app in the same process registers without clashing
    metrics.observe_job(finished)
    text, content_type = metrics.render()
    rendered = text.decode()
    assert content_type.startswith("text/plain")
    assert "reimagine_store_up 1.0" in rendered
    assert "reimagine_queue_depth 1.0" in rendered
    assert 'reimagine_jobs{status="QUEUED"} 1.0' in rendered
    assert 'reimagine_jobs{status="SUCCEEDED"} 1.0' in rendered
    assert 'reimagine_jobs{status="FAILED"} 0.0' in rendered
    assert 'reimagine_jobs_completed_total{error_type="",outcome="succeeded"} 1.0' in rendered
    assert "reimagine_job_wait_seconds_count 1.0" in rendered
    assert "reimagine_job_run_seconds_count 1.0" in rendered


def test_metrics_scrape_answers_when_the_store_is_down() -> None:
    class DownStore:
        def count_by_status(self) -> dict[str, int]:
            raise ConnectionError("database unavailable")

    rendered = Metrics(DownStore()).render()[0].decode()
    assert "reimagine_store_up 0.0" in rendered
    assert "reimagine_queue_depth" not in rendered


def test_failed_job_counts_its_error_type(store: JobStore) -> None:
    metrics = Metrics(store)
    job = finish_job(store, "https://hooks.example.com/in")
    metrics.observe_job(replace(job, status=JobStatus.FAILED, error_type="out_of_memory", started_at=None))
    rendered = metrics.render()[0].decode()
    assert 'reimagine_jobs_completed_total{error_type="out_of_memory",outcome="failed"} 1.0' in rendered
    assert "reimagine_job_wait_seconds_count 0.0" in rendered


def test_wellknown_routes_serve_jwks_and_metrics(tmp_path: Path, store: JobStore) -> None:
    key = WebhookKey.load_or_create(settings_for(tmp_path))
    app = create_app(settings_for(tmp_path, workers=0, offline=True), store=store)
    with TestClient(app) as client:
        jwks = client.get("/.well-known/jwks.json")
        scrape = client.get("/metrics")
    assert jwks.status_code == 200 and "max-age" in jwks.headers["cache-control"]
    now = int(time.time())
    headers = {
        "x-fal-webhook-request-id": "r",
        "x-fal-webhook-user-id": "u",
        "x-fal-webhook-timestamp": str(now),
        "x-fal-webhook-signature": key.sign("r", "u", str(now), b"{}"),
    }
    assert verify_signature(jwks.json(), headers, b"{}", now=now)
    assert scrape.status_code == 200 and "reimagine_queue_depth 0.0" in scrape.text
    assert scrape.headers["content-type"].startswith("text/plain")


def test_metrics_can_require_a_bearer_token_or_an_admin_key(tmp_path: Path, store: JobStore) -> None:
    grants = {
        "admin:secret": KeyGrant(id="admin", name="ops", scope=Scope.ADMIN),
        "reader:secret": KeyGrant(id="reader", name="ro", scope=Scope.READ),
    }
    app = create_app(settings_for(tmp_path, workers=0, offline=True), store=store)
    state = app_state(app)
    state.authenticate = grants.get
    with TestClient(app) as client:
        state.settings = settings_for(tmp_path, metrics_token="t0ken", workers=0, offline=True)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer t0ken"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Key admin:secret"}).status_code == 401

        state.settings = settings_for(tmp_path, metrics_key=True, workers=0, offline=True)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Key reader:secret"}).status_code == 403
        assert client.get("/metrics", headers={"Authorization": "Key admin:secret"}).status_code == 200
