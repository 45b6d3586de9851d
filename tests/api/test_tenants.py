"""fal's platform headers and the many-teams controls through the HTTP API, on SQLite and PostgreSQL (issue 16).

The store-level behaviour (fair turns, concurrency limits, idempotency windows, usage sums) is in
tests/store/test_tenants.py; here each is seen as a client sees it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reimagine.queue import JobStore, open_store
from reimagine.queue.keys import Scope
from tests.api.conftest import database_url
from tests.api.helpers import ENDPOINT, REQUESTS, submit, wait_completed, wait_running
from tests.conftest import ServeProcess


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, backend: str
) -> Iterator[tuple[ServeProcess, JobStore]]:
    """A server and the store it uses (to make keys with scopes and expiries, as `reimagine keys create` does)."""
    from tests.api.conftest import _flags

    flags = _flags(request, backend)
    data_dir = tmp_path_factory.mktemp("serve")
    proc = ServeProcess(data_dir, "--allow-hosts", "127.0.0.1", *flags).start()
    store = open_store(database_url(data_dir, flags))
    yield proc, store
    store.close()
    proc.stop()


@pytest.fixture
def client(served: tuple[ServeProcess, JobStore]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].url, headers=served[0].headers(), timeout=30) as http:
        yield http


def _as(served: tuple[ServeProcess, JobStore], key: str) -> httpx.Client:
    return httpx.Client(base_url=served[0].url, headers={"Authorization": f"Key {key}"}, timeout=30)


def _wait_status(http: httpx.Client, url: str, status: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (code := http.get(url).status_code) != status:
        assert time.monotonic() < deadline, f"{url} still answers {code}, waiting for {status}"
        time.sleep(0.05)


def test_listing_newest_first_with_cursor_status_filter_and_only_the_keys_own(
    served: tuple[ServeProcess, JobStore], client: httpx.Client
) -> None:
    other = served[1].keys.create("other")
    ids = [submit(client, {"prompt": f"list {n}"})["request_id"] for n in range(3)]
    for request_id in ids:
        wait_completed(client, request_id)
    first = client.get(REQUESTS, params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    listed = [entry["request_id"] for entry in page["requests"]]
    assert listed == ids[::-1][:2]
    entry = page["requests"][0]
    assert entry["status"] == "COMPLETED" and entry["state"] == "SUCCEEDED" and entry["input"]["prompt"] == "list 2"
    assert entry["status_url"].endswith(f"/requests/{ids[2]}/status") and entry["completed_at"]
    rest = client.get(REQUESTS, params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["requests"][0]["request_id"] == ids[0]
    assert client.get(REQUESTS, params={"status": "IN_QUEUE"}).json()["requests"] == []
    with _as(served, other) as stranger:
        assert stranger.get(REQUESTS).json() == {"requests": [], "next_cursor": None}
    for params in ({"limit": 0}, {"status": "DONE"}, {"cursor": "x"}):
        bad = client.get(REQUESTS, params=params)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][0] == "query", bad.text


def test_delete_removes_input_result_and_files_of_a_finished_request(
    served: tuple[ServeProcess, JobStore], client: httpx.Client
) -> None:
    running = submit(client, {"prompt": "sleep=0.05 deleting", "num_inference_steps": 40})["request_id"]
    wait_running(client, running)
    busy = client.delete(f"{REQUESTS}/{running}")
    assert busy.status_code == 400 and "cancel" in busy.json()["detail"]
    client.put(f"{REQUESTS}/{running}/cancel")
    wait_completed(client, running)

    done = submit(client, {"prompt": "to delete", "canny_image_url": _scene_uri()})["request_id"]
    wait_completed(client, done)
    listed = client.get(REQUESTS, params={"limit": 1}).json()["requests"][0]
    assert listed["input"]["canny_image_url"].startswith("data:image/png;base64,... ("), "not the megabytes"
    image_url = client.get(f"{REQUESTS}/{done}").json()["image"]["url"]
    assert client.get(image_url).status_code == 200
    with _as(served, served[1].keys.create("other")) as stranger:
        assert stranger.delete(f"{REQUESTS}/{done}").status_code == 404
    deleted = client.delete(f"{REQUESTS}/{done}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted_files"] >= 2, "the image and the canny map"
    assert client.get(f"{REQUESTS}/{done}").status_code == 404
    assert client.get(f"{REQUESTS}/{done}/status").status_code == 404
    assert client.get(image_url).status_code == 404
    assert client.delete(f"{REQUESTS}/{done}").status_code == 404


def _scene_uri() -> str:
    from tests.api.helpers import data_uri, scene_png

    return data_uri(scene_png((64, 48)))


def test_scopes_expiry_and_revocation_at_once(served: tuple[ServeProcess, JobStore], client: httpx.Client) -> None:
    store = served[1]
    mine = submit(client, {"prompt": "scoped"})["request_id"]
    reader, submitter = store.keys.create("dash", scope=Scope.READ), store.keys.create("batch", scope=Scope.SUBMIT)
    with _as(served, reader) as http:
        refused = http.post(ENDPOINT, json={"prompt": "x"})
        assert refused.status_code == 403 and "read" in refused.json()["detail"]
        assert http.get(REQUESTS).status_code == 200
        assert http.put(f"{REQUESTS}/{mine}/cancel").status_code == 403
        assert http.get(f"{REQUESTS}/{mine}/status").status_code == 404, "another key's request"
    with _as(served, submitter) as http:
        own = submit(http, {"prompt": "from batch"})["request_id"]
        assert http.get(f"{REQUESTS}/{own}/status").status_code == 403
        assert http.get(REQUESTS).status_code == 403
        assert http.post("/run/bria/reimagine/3.2", json={"prompt": "run"}).status_code == 200
        assert http.delete(f"{REQUESTS}/{own}").status_code == 403, "deleting needs admin"
    expired = store.keys.create("old", expires_at=time.time() - 1)
    with _as(served, expired) as http:
        assert http.get(REQUESTS).status_code == 401
    revoked = store.keys.create("leaver")
    with _as(served, revoked) as http:
        assert http.get(REQUESTS).status_code == 200  # now cached, where the store allows caching
        assert store.keys.revoke(revoked.partition(":")[0])
        if store.db.is_sqlite:
            assert http.get(REQUESTS).status_code == 401, "SQLite: the next request reads the key"
        else:
            # PostgreSQL: the revocation's NOTIFY empties every replica's cache (its own lifetime is 5 s).
            _wait_status(http, REQUESTS, 401, timeout_s=3)


def test_idempotency_key_same_body_same_request_other_body_422(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"order-{time.time_ns()}"}
    first = submit(client, {"prompt": "idem"}, headers=headers)
    again = submit(client, {"prompt": "idem"}, headers=headers)
    assert again["request_id"] == first["request_id"]
    wait_completed(client, first["request_id"])
    run = client.post("/run/bria/reimagine/3.2", json={"prompt": "idem"}, headers=headers)
    assert run.status_code == 200 and run.headers["x-fal-request-id"] == first["request_id"]
    other = client.post(ENDPOINT, json={"prompt": "something else"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_fal_max_queue_length_is_429_for_the_keys_own_waiting_requests(client: httpx.Client) -> None:
    busy = submit(client, {"prompt": "sleep=0.05 busy", "num_inference_steps": 40})["request_id"]
    wait_running(client, busy)
    waiting = submit(client, {"prompt": "waits"}, params={"fal_max_queue_length": 1})["request_id"]
    full = client.post(ENDPOINT, json={"prompt": "refused"}, params={"fal_max_queue_length": 1})
    assert full.status_code == 429 and "retry-after" in full.headers
    assert full.json()["error_type"] == full.headers["x-fal-error-type"] == "queue_full"
    bad = client.post(ENDPOINT, json={"prompt": "x"}, params={"fal_max_queue_length": "lots"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "fal_max_queue_length"]
    for request_id in (busy, waiting):
        client.put(f"{REQUESTS}/{request_id}/cancel")


def test_lifecycle_expires_the_requests_files_and_store_io_0_erases_its_input(client: httpx.Client) -> None:
    lifecycle = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 1})}
    short = submit(client, {"prompt": "short-lived"}, headers={**lifecycle, "X-Fal-Store-IO": "0"})["request_id"]
    kept = submit(client, {"prompt": "kept"})["request_id"]
    for request_id in (short, kept):
        wait_completed(client, request_id)
    short_url = client.get(f"{REQUESTS}/{short}").json()["image"]["url"]
    kept_url = client.get(f"{REQUESTS}/{kept}").json()["image"]["url"]
    _wait_status(client, short_url, 410)
    assert client.get(kept_url).status_code == 200
    listed = {entry["request_id"]: entry for entry in client.get(REQUESTS, params={"limit": 100}).json()["requests"]}
    assert listed[short]["input"] is None and listed[kept]["input"]["prompt"] == "kept"
    bad = client.post(ENDPOINT, json={"prompt": "x"}, headers={"X-Fal-Object-Lifecycle-Preference": "soon"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["header", "x-fal-object-lifecycle-preference"]


def test_no_retry_ends_with_runner_disconnected_on_the_first_worker_death(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "crash"}, headers={"X-Fal-No-Retry": "true"})["request_id"]
    status = wait_completed(client, request_id, timeout_s=60)
    assert status["error_type"] == "runner_disconnected", status
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 503 and result.headers["x-fal-error-type"] == "runner_disconnected"
    attempts = [e for e in status["logs"] if "re-queued" in e["message"]]
    assert attempts == [], "it was not run a second time"


def test_usage_per_key_name_in_metrics(served: tuple[ServeProcess, JobStore], client: httpx.Client) -> None:
    key = served[1].keys.create("metered")
    with _as(served, key) as http:
        for n in range(2):
            wait_completed(http, submit(http, {"prompt": f"metered {n}"})["request_id"])
    metrics = httpx.get(served[0].url + "/metrics").text
    samples = _samples(metrics, 'key="metered"')
    assert samples["reimagine_usage_images_total"] == 2, samples
    assert samples["reimagine_usage_input_bytes_total"] > 0 and samples["reimagine_usage_output_bytes_total"] > 0
    assert "reimagine_usage_gpu_seconds_total" in samples


def _samples(metrics: str, label: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in metrics.splitlines():
        if label in line and not line.startswith("#"):
            name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
            found[name] = value
    return found


def test_the_lifecycle_sweep_deletes_expired_files_from_storage(tmp_path: Path) -> None:
    """The app's sweep loop: a file past its lifecycle leaves the store and the storage; others stay."""
    from reimagine.api.maintenance import expire_files
    from reimagine.storage import new_key
    from reimagine.storage.local import LocalStorage

    store = open_store(f"sqlite:///{tmp_path / 'reimagine.db'}")
    storage = LocalStorage(tmp_path / "files")
    short, kept = (storage.put(b"x", "text/plain", key=new_key("text/plain")).key for _ in range(2))
    store.add_upload(short, key_id="k", content_type="text/plain", ttl_s=0.01)
    store.add_upload(kept, key_id="k", content_type="text/plain", ttl_s=3600)

    async def sweep_until_gone() -> None:
        task = asyncio.create_task(expire_files(store, storage, every_s=0.01))
        try:
            while storage.exists(short):
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    try:
        asyncio.run(asyncio.wait_for(sweep_until_gone(), timeout=10))
        assert store.file_expiry(short) is None and storage.exists(kept) and store.file_expiry(kept) is not None
    finally:
        store.close()
