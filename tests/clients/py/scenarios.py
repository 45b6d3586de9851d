"""The unmodified Python `fal-client` against a running `reimagine serve`, one scenario per process.

    python tests/clients/py/scenarios.py <scenario>

Configured only the way a user would (docs/clients.md), in the environment, before `fal_client` is imported:
FAL_KEY, FAL_RUN_HOST=<host:port>/run, FAL_QUEUE_RUN_HOST=<host:port>, SSL_CERT_FILE=<CA of the server's cert>.
The storage host has no setting in fal-client, so the two URL constants are assigned below (fal-protocol.md §11.1).
The test passes REIMAGINE_URL (the server's base URL), SCENE_PNG (a drawn scene) and WORK_DIR (scratch space).
A failure names the client call that broke: every call runs inside `call("<name>")`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client
import httpx
from PIL import Image

BASE_URL = os.environ["REIMAGINE_URL"]
# fal-client has no setting for its storage host: these two lines are the documented exception (docs/clients.md).
fal_client.client.REST_URL = BASE_URL
fal_client.client.CDN_URL = BASE_URL

ENDPOINT = "bria/reimagine/3.2"
SCENE_PNG = Path(os.environ["SCENE_PNG"])
WORK_DIR = Path(os.environ["WORK_DIR"])
SIZE = (1024, 1024)  # 1:1: the default, and the square scene's own ratio


@contextmanager
def call(name: str) -> Iterator[None]:
    """Run one client call; a failure names it."""
    print(f"-> {name}", flush=True)
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from exc
    except Exception as exc:
        raise AssertionError(f"client call {name} raised {type(exc).__name__}: {exc}") from exc


@contextmanager
def expect_http_error(name: str, status_code: int) -> Iterator[list[fal_client.FalClientHTTPError]]:
    """A client call that must raise FalClientHTTPError with `status_code`; the error is appended to the list."""
    print(f"-> {name} (expects HTTP {status_code})", flush=True)
    caught: list[fal_client.FalClientHTTPError] = []
    try:
        yield caught
    except fal_client.FalClientHTTPError as exc:
        assert exc.status_code == status_code, f"{name}: HTTP {exc.status_code} ({exc}), expected {status_code}"
        caught.append(exc)
    else:
        raise AssertionError(f"{name}: no FalClientHTTPError, expected HTTP {status_code}")


def inputs(prompt: str = "a cozy house, log=hello", **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, "num_inference_steps": 20, **fields}


def http() -> httpx.Client:
    """For checks on the side (downloads, JWKS); trusts SSL_CERT_FILE like the client."""
    return httpx.Client(timeout=60)


def check_image(result: dict[str, Any], size: tuple[int, int] = SIZE) -> None:
    """The result is fal's output shape and its image URL serves a PNG of the expected size."""
    image = result["image"]
    assert image["url"].startswith(BASE_URL + "/"), image["url"]
    assert (image["width"], image["height"]) == size, image
    with http() as client:
        response = client.get(image["url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(image["content_type"])
    assert Image.open(io.BytesIO(response.content)).size == size


def check_download(url: str, data: bytes, content_type: str) -> None:
    assert url.startswith(BASE_URL + "/"), url
    with http() as client:
        response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type), response.headers
    assert response.content == data, f"{url}: {len(response.content)} bytes, uploaded {len(data)}"


class _LocalHttp:
    """A loopback HTTP server: hosts the scene (image by URL) and records webhook deliveries."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = SCENE_PNG.read_bytes()
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                owner.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


# --- sync client -------------------------------------------------------------------------------------------------


def scenario_run_inputs() -> None:
    """`run` with the scene as URL, data URI and uploaded file; depth and canny preprocessing on and off."""
    host = _LocalHttp()
    with call("fal_client.encode_file"):
        data_uri = fal_client.encode_file(SCENE_PNG)
        assert data_uri.startswith("data:image/png;base64,")
    with call("fal_client.upload_file"):
        uploaded = fal_client.upload_file(SCENE_PNG)
    sources = {"url": host.url("/scene.png"), "data_uri": data_uri, "uploaded": uploaded}
    for how, url in sources.items():
        for preprocess in (True, False):
            fields: dict[str, Any] = {"depth_image_url": url, "canny_image_url": url}
            fields.update(depth_preprocess=preprocess, canny_preprocess=preprocess, seed=7)
            with call(f"fal_client.run (image as {how}, preprocess={preprocess})"):
                result = fal_client.run(ENDPOINT, arguments=inputs(**fields))
                check_image(result)
                assert result["seed"] == 7
    host.httpd.shutdown()


def scenario_subscribe() -> None:
    """`subscribe` with `on_enqueue`, `on_queue_update` and logs."""
    updates: list[fal_client.Status] = []
    enqueued: list[str] = []
    with call("fal_client.subscribe"):
        result = fal_client.subscribe(
            ENDPOINT,
            arguments=inputs("sleep=0.02 log=hello-from-subscribe"),
            with_logs=True,
            on_enqueue=enqueued.append,
            on_queue_update=updates.append,
        )
        check_image(result)
    assert len(enqueued) == 1
    assert isinstance(updates[-1], fal_client.Completed), updates
    assert updates[-1].error is None and updates[-1].logs is not None
    messages = [line["message"] for line in updates[-1].logs]
    assert "hello-from-subscribe" in messages, messages
    assert any(isinstance(update, fal_client.InProgress) for update in updates), updates


def scenario_queue() -> None:
    """`submit` -> `status` (with logs) -> `iter_events` -> `get`; `status`/`result` by request id; `get_handle`."""
    with call("fal_client.submit"):
        handle = fal_client.submit(ENDPOINT, arguments=inputs("sleep=0.02 log=queued-line"))
        assert handle.response_url == f"{BASE_URL}/bria/reimagine/requests/{handle.request_id}", handle.response_url
    with call("SyncRequestHandle.status(with_logs=True)"):
        status = handle.status(with_logs=True)
        assert isinstance(status, fal_client.Queued | fal_client.InProgress | fal_client.Completed), status
    with call("SyncRequestHandle.iter_events(with_logs=True)"):
        events = list(handle.iter_events(with_logs=True, interval=0.05))
        assert isinstance(events[-1], fal_client.Completed), events
        assert events[-1].logs is not None
        assert "queued-line" in [line["message"] for line in events[-1].logs]
    with call("SyncRequestHandle.get"):
        result = handle.get()
        check_image(result)
    with call("SyncClient.get_handle"):
        assert fal_client.sync_client.get_handle(ENDPOINT, handle.request_id) == handle
    with call("fal_client.status(app, request_id, with_logs=True)"):
        completed = fal_client.status(ENDPOINT, handle.request_id, with_logs=True)
        assert isinstance(completed, fal_client.Completed) and completed.logs, completed
        assert completed.metrics.get("inference_time") is not None, completed.metrics
    with call("fal_client.status(app, request_id) without logs"):
        quiet = fal_client.status(ENDPOINT, handle.request_id)
        assert isinstance(quiet, fal_client.Completed) and quiet.logs is None, quiet
    with call("fal_client.result(app, request_id)"):
        assert fal_client.result(ENDPOINT, handle.request_id) == result


def _wait_in_progress(handle: fal_client.SyncRequestHandle) -> None:
    deadline = time.monotonic() + 30
    while not isinstance(handle.status(), fal_client.InProgress):
        assert time.monotonic() < deadline, "the slow request never started"
        time.sleep(0.05)


def scenario_cancel() -> None:
    """`cancel` of a queued and of a running request; both complete with an error; a second cancel is HTTP 400."""
    with call("fal_client.submit (slow)"):
        running = fal_client.submit(ENDPOINT, arguments=inputs("sleep=0.1 slow", num_inference_steps=50))
    with call("SyncRequestHandle.status until IN_PROGRESS"):
        _wait_in_progress(running)
    with call("fal_client.submit (waits behind it)"):
        queued = fal_client.submit(ENDPOINT, arguments=inputs("never runs"))
    with call("SyncRequestHandle.status (queued)"):
        status = queued.status()
        assert isinstance(status, fal_client.Queued), status
    with call("SyncRequestHandle.cancel (queued)"):
        queued.cancel()
    with call("SyncRequestHandle.status after cancel (queued)"):
        done = queued.status()
        assert isinstance(done, fal_client.Completed) and done.error, done
    with expect_http_error("SyncRequestHandle.get of a cancelled request", 499):
        queued.get()
    with call("fal_client.cancel(app, request_id) (running)"):
        fal_client.cancel(ENDPOINT, running.request_id)
    with call("SyncRequestHandle.iter_events after cancel (running)"):
        last = list(running.iter_events(interval=0.05))[-1]
        assert isinstance(last, fal_client.Completed), last
        assert last.error == "Request cancelled by the client.", last
    with expect_http_error("SyncRequestHandle.cancel of a completed request", 400):
        running.cancel()


def scenario_upload() -> None:
    """`upload` (CDN v3, and the `fal` initiate + PUT fallback on its own), `upload_file`, `upload_image`."""
    scene = SCENE_PNG.read_bytes()
    with call("fal_client.upload (default: fal_v3, falls back to fal)"):
        check_download(fal_client.upload(scene, "image/png", "scene.png"), scene, "image/png")
    with call("fal_client.upload (fal_v3 only, no fallback)"):
        url = fal_client.upload(scene, "image/png", "v3.png", repository="fal_v3", fallback_repository=[])
        check_download(url, scene, "image/png")
    with call("fal_client.upload (fal: storage initiate + PUT only)"):
        url = fal_client.upload(scene, "image/png", "gcs.png", repository="fal", fallback_repository=[])
        check_download(url, scene, "image/png")
    with call("fal_client.upload_file"):
        check_download(fal_client.upload_file(SCENE_PNG), scene, "image/png")
    with call("fal_client.upload_image"):
        image = Image.open(SCENE_PNG)
        url = fal_client.upload_image(image)
        with http() as client:
            response = client.get(url)
        assert response.headers["content-type"].startswith("image/jpeg"), response.headers
        assert Image.open(io.BytesIO(response.content)).size == image.size
    with call("fal_client.run with the uploaded image"):
        check_image(fal_client.run(ENDPOINT, arguments=inputs(depth_image_url=url, canny_image_url=url)))


def scenario_multipart() -> None:
    """`upload` above the client's MULTIPART_THRESHOLD: CDN multipart (create, parallel part PUTs, complete)."""
    size = fal_client.client.MULTIPART_THRESHOLD + 1
    data = os.urandom(1024 * 1024) * (size // (1024 * 1024)) + b"!"
    assert len(data) == size
    started = time.monotonic()
    with call(f"fal_client.upload of {size} bytes (multipart)"):
        url = fal_client.upload(
            data, "application/octet-stream", "big.bin", repository="fal_v3", fallback_repository=[]
        )
    print(f"multipart upload of {size / 2**20:.1f} MiB took {time.monotonic() - started:.1f} s", flush=True)
    digest = hashlib.sha256()
    received = 0
    with http() as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            digest.update(chunk)
            received += len(chunk)
    assert received == size, received
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def scenario_stream() -> None:
    """`stream`: the run host's `/stream` server-sent events; the last event is the result."""
    with call("fal_client.stream"):
        events = list(fal_client.stream(ENDPOINT, arguments=inputs("sleep=0.01 streamed")))
    assert len(events) >= 2, events
    check_image(events[-1])


def scenario_errors() -> None:
    """A bad key is HTTP 401, a bad field HTTP 422, both as FalClientHTTPError."""
    stranger = fal_client.SyncClient(key="nobody:nothing")
    with expect_http_error("SyncClient(key=bad).run", 401) as caught:
        stranger.run(ENDPOINT, arguments=inputs())
    assert caught[0].message == "No user found for Key ID and Secret", caught[0].message
    with expect_http_error("SyncClient(key=bad).submit", 401):
        stranger.submit(ENDPOINT, arguments=inputs())
    with expect_http_error("fal_client.run with num_inference_steps=5", 422) as caught:
        fal_client.run(ENDPOINT, arguments=inputs(num_inference_steps=5))
    detail = caught[0].message
    assert isinstance(detail, list) and detail[0]["loc"] == ["body", "num_inference_steps"], detail
    with expect_http_error("fal_client.submit without a prompt", 422) as caught:
        fal_client.submit(ENDPOINT, arguments={"seed": 1})
    assert caught[0].message[0]["loc"] == ["body", "prompt"], caught[0].message


def _verify_fal_signature(jwks: dict[str, Any], headers: dict[str, str], body: bytes) -> bool:
    """fal's webhook check as a receiver written for fal does it (fal-protocol.md §9), independent of reimagine."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    timestamp = headers["x-fal-webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            timestamp,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def scenario_webhook() -> None:
    """`submit(webhook_url=...)`: the delivery reaches a loopback receiver and verifies against the server's JWKS."""
    receiver = _LocalHttp()
    with call("fal_client.submit(webhook_url=...)"):
        handle = fal_client.submit(ENDPOINT, arguments=inputs("hooked"), webhook_url=receiver.url("/hook?x=1"))
    with call("SyncRequestHandle.get"):
        result = handle.get()
    deadline = time.monotonic() + 30
    while not receiver.deliveries and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.deliveries, "no webhook delivery within 30 s"
    headers, body = receiver.deliveries[0]
    payload = json.loads(body)
    assert payload["request_id"] == handle.request_id and payload["status"] == "OK", payload
    assert payload["payload"] == result
    with http() as client:
        jwks = client.get(BASE_URL + "/.well-known/jwks.json").json()
    assert _verify_fal_signature(jwks, headers, body), (headers, jwks)
    assert not _verify_fal_signature(jwks, headers, body.replace(b'"OK"', b'"ERROR"'))
    receiver.httpd.shutdown()


# --- async client ------------------------------------------------------------------------------------------------


async def _async_scenario() -> None:
    scene = SCENE_PNG.read_bytes()
    with call("fal_client.upload_file_async"):
        url = await fal_client.upload_file_async(SCENE_PNG)
        check_download(url, scene, "image/png")
    with call("fal_client.upload_async (fal_v3 only)"):
        v3 = await fal_client.upload_async(scene, "image/png", "a.png", repository="fal_v3", fallback_repository=[])
        check_download(v3, scene, "image/png")
    with call("fal_client.upload_async (fal only)"):
        gcs = await fal_client.upload_async(scene, "image/png", "b.png", repository="fal", fallback_repository=[])
        check_download(gcs, scene, "image/png")
    with call("fal_client.upload_image_async"):
        await fal_client.upload_image_async(Image.open(SCENE_PNG), format="png")
    with call("fal_client.run_async"):
        check_image(await fal_client.run_async(ENDPOINT, arguments=inputs(depth_image_url=url)))

    updates: list[fal_client.Status] = []
    with call("fal_client.subscribe_async"):
        result = await fal_client.subscribe_async(
            ENDPOINT,
            arguments=inputs("sleep=0.01 log=async-line", canny_image_url=url, canny_preprocess=False),
            with_logs=True,
            on_queue_update=updates.append,
        )
        check_image(result)
    assert isinstance(updates[-1], fal_client.Completed) and updates[-1].logs is not None, updates
    assert "async-line" in [line["message"] for line in updates[-1].logs]

    with call("fal_client.submit_async"):
        handle = await fal_client.submit_async(ENDPOINT, arguments=inputs("sleep=0.01 log=async-queued"))
    with call("AsyncRequestHandle.status(with_logs=True)"):
        await handle.status(with_logs=True)
    with call("AsyncRequestHandle.iter_events(with_logs=True)"):
        events = [event async for event in handle.iter_events(with_logs=True, interval=0.05)]
        assert isinstance(events[-1], fal_client.Completed), events
    with call("AsyncRequestHandle.get"):
        result = await handle.get()
        check_image(result)
    with call("fal_client.status_async(app, request_id, with_logs=True)"):
        status = await fal_client.status_async(ENDPOINT, handle.request_id, with_logs=True)
        assert isinstance(status, fal_client.Completed) and status.logs, status
    with call("fal_client.result_async(app, request_id)"):
        assert await fal_client.result_async(ENDPOINT, handle.request_id) == result

    with call("fal_client.stream_async"):
        streamed = [event async for event in fal_client.stream_async(ENDPOINT, arguments=inputs("streamed"))]
        check_image(streamed[-1])

    with call("fal_client.submit_async (slow)"):
        running = await fal_client.submit_async(ENDPOINT, arguments=inputs("sleep=0.1 slow", num_inference_steps=50))
    with call("fal_client.submit_async (queued behind it)"):
        queued = await fal_client.submit_async(ENDPOINT, arguments=inputs("never runs"))
    with call("AsyncRequestHandle.cancel (queued)"):
        await queued.cancel()
    with call("AsyncRequestHandle.status until IN_PROGRESS"):
        deadline = time.monotonic() + 30
        while not isinstance(await running.status(), fal_client.InProgress):
            assert time.monotonic() < deadline, "the slow request never started"
            await asyncio.sleep(0.05)
    with call("fal_client.cancel_async(app, request_id) (running)"):
        await fal_client.cancel_async(ENDPOINT, running.request_id)
    for name, cancelled in (("queued", queued), ("running", running)):
        with call(f"AsyncRequestHandle.iter_events after cancel ({name})"):
            last = [event async for event in cancelled.iter_events(interval=0.05)][-1]
            assert isinstance(last, fal_client.Completed) and last.error, last
        with expect_http_error(f"AsyncRequestHandle.get of a cancelled request ({name})", 499):
            await cancelled.get()
    with expect_http_error("AsyncClient(key=bad).run", 401):
        await fal_client.AsyncClient(key="nobody:nothing").run(ENDPOINT, arguments=inputs())
    with expect_http_error("fal_client.run_async with depth_scale=2", 422):
        await fal_client.run_async(ENDPOINT, arguments=inputs(depth_scale=2))


def scenario_async() -> None:
    """The async client: run, subscribe, submit/status/iter_events/get, by-id calls, stream, cancel, uploads."""
    asyncio.run(_async_scenario())


def _wait_gone(url: str) -> int:
    """Poll a file URL until it no longer serves (the request's lifecycle expired it); its final status code."""
    deadline = time.monotonic() + 30
    with http() as client:
        while True:
            code = client.get(url).status_code
            if code != 200:
                return code
            assert time.monotonic() < deadline, f"{url} still served after its expiry"
            time.sleep(0.1)


def scenario_platform() -> None:
    """fal's platform headers, sent the way fal-client sends them (`headers=`, `lifecycle=`, `path=`)."""
    lifecycle = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 2})}
    with call("fal_client.subscribe with X-Fal-Object-Lifecycle-Preference (2 s)"):
        result = fal_client.subscribe(ENDPOINT, arguments=inputs(), headers=lifecycle)
        check_image(result)
    with call("the output file expires: 410, then 404 once swept"):
        assert _wait_gone(result["image"]["url"]) in (404, 410)
    with call("fal_client.upload with lifecycle=StorageSettings(expires_in=2)"):
        uploaded = fal_client.upload(
            b"short-lived", "text/plain", lifecycle=fal_client.client.StorageSettings(expires_in=2)
        )
        with http() as client:
            assert client.get(uploaded).content == b"short-lived"
        assert _wait_gone(uploaded) in (404, 410)

    with call("fal_client.submit with X-Fal-No-Retry: its worker dies"):
        handle = fal_client.submit(ENDPOINT, arguments=inputs("crash once"), headers={"X-Fal-No-Retry": "1"})
    with expect_http_error("SyncRequestHandle.get of a request whose worker died", 503) as caught:
        handle.get()
    assert caught[0].error_type == "runner_disconnected", caught[0]
    with call("fal_client.status after the death"):
        done = fal_client.status(ENDPOINT, handle.request_id)
        assert isinstance(done, fal_client.Completed) and done.error_type == "runner_disconnected", done

    key = {"Idempotency-Key": f"order-{time.time_ns()}"}
    with call("fal_client.submit twice with one Idempotency-Key"):
        first = fal_client.submit(ENDPOINT, arguments=inputs("idempotent"), headers=key)
        second = fal_client.submit(ENDPOINT, arguments=inputs("idempotent"), headers=key)
        assert second.request_id == first.request_id
        check_image(second.get())
    with call("fal_client.run with the same Idempotency-Key joins the same request"):
        check_image(fal_client.run(ENDPOINT, arguments=inputs("idempotent"), headers=key))
    with expect_http_error("fal_client.submit with the same Idempotency-Key and another body", 422) as caught:
        fal_client.submit(ENDPOINT, arguments=inputs("something else"), headers=key)
    assert "idempotency-key" in json.dumps(caught[0].message).lower(), caught[0].message

    # fal-client has no query-parameter argument: `path` is appended to the URL, which carries the parameter. It
    # retries a 429 (ten attempts, backing off), so a refused submit is sent again until the key has room.
    with call("fal_client.submit to keep the worker busy, and one behind it"):
        busy = fal_client.submit(ENDPOINT, arguments=inputs("sleep=0.05 hold the worker", num_inference_steps=40))
        _wait_in_progress(busy)
        waiting = fal_client.submit(ENDPOINT, arguments=inputs("waits"))
    with call("fal_client.submit with fal_max_queue_length=1: refused (429) until the waiting one started"):
        fal_client.submit(ENDPOINT, arguments=inputs("after"), path="?fal_max_queue_length=1")
        # Admitted at once, it would have found `waiting` still queued behind the 2 s job.
        assert not isinstance(waiting.status(), fal_client.Queued), "admitted while the key's queue was full"


def scenario_tiny() -> None:
    """End to end on `--model tiny`: an uploaded scene with depth and canny preprocessing, via subscribe."""
    with call("fal_client.upload_file"):
        url = fal_client.upload_file(SCENE_PNG)
    updates: list[fal_client.Status] = []
    fields = {"depth_image_url": url, "canny_image_url": url, "depth_preprocess": True, "canny_preprocess": True}
    with call("fal_client.subscribe (tiny model)"):
        result = fal_client.subscribe(
            ENDPOINT, arguments=inputs("a red house", **fields), with_logs=True, on_queue_update=updates.append
        )
        check_image(result)
    assert isinstance(updates[-1], fal_client.Completed) and updates[-1].error is None, updates
    assert updates[-1].logs, "the real pipeline logs its steps"


SCENARIOS: dict[str, Callable[[], None]] = {
    name.removeprefix("scenario_"): function
    for name, function in list(globals().items())
    if name.startswith("scenario_") and callable(function)
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
    print("ok", flush=True)
