"""The queue API end to end: a real `reimagine serve` process, a real SQLite file, the fake generate."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from PIL import Image

from tests.api.helpers import ENDPOINT, REQUESTS, data_uri, scene_png, submit, wait_completed, wait_running
from tests.conftest import ServeProcess


def test_submit_status_result_with_canny_data_uri(client: httpx.Client, server: ServeProcess) -> None:
    submitted = submit(client, {"prompt": "a house", "canny_image_url": data_uri(scene_png()), "aspect_ratio": "16:9"})
    request_id = submitted["request_id"]
    assert submitted["status"] == "IN_QUEUE"
    assert submitted["response_url"] == f"{server.url}{REQUESTS}/{request_id}"
    assert submitted["status_url"] == submitted["response_url"] + "/status"
    assert submitted["cancel_url"] == submitted["response_url"] + "/cancel"
    assert isinstance(submitted["queue_position"], int)

    status = wait_completed(client, request_id)
    assert status["error"] is None
    assert any(line["message"] == "Step 30/30" for line in status["logs"])
    assert status["metrics"]["inference_time"] >= 0
    assert "canny" in status["reimagine"]["maps"]

    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 200
    assert result.headers["x-fal-request-id"] == request_id
    image = result.json()["image"]
    assert (image["width"], image["height"]) == (1344, 768)
    assert image["content_type"] == "image/png"
    # Downloadable without a key, like fal's CDN URLs.
    download = httpx.get(image["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert len(download.content) == image["file_size"]
    assert Image.open(io.BytesIO(download.content)).size == (1344, 768)
    canny_map = httpx.get(status["reimagine"]["maps"]["canny"])
    assert canny_map.status_code == 200
    # The worker's own phases next to the model's: what bench/serve_gpu.py reports as CPU time outside the GPU.
    assert {"denoise", "inputs", "progress", "output", "cpu"} <= set(result.json()["timings"])


def test_the_structure_image_picks_the_size_unless_aspect_ratio_is_sent(client: httpx.Client) -> None:
    landscape = data_uri(scene_png((1600, 900)))
    for body, size in (
        ({"prompt": "a house", "depth_image_url": landscape}, (1344, 768)),
        ({"prompt": "a house", "depth_image_url": landscape, "aspect_ratio": "1:1"}, (1024, 1024)),
        ({"prompt": "a house"}, (1024, 1024)),
    ):
        request_id = submit(client, body)["request_id"]
        assert wait_completed(client, request_id)["error"] is None
        image = client.get(f"{REQUESTS}/{request_id}").json()["image"]
        assert (image["width"], image["height"]) == size


def test_canny_from_an_allow_listed_local_url(client: httpx.Client) -> None:
    png = scene_png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/scene.png"
        request_id = submit(client, {"prompt": "a house", "canny_image_url": url})["request_id"]
        status = wait_completed(client, request_id)
        assert status["error"] is None, status
        assert client.get(f"{REQUESTS}/{request_id}").json()["image"]["width"] == 1152  # the scene's 4:3
    finally:
        httpd.shutdown()


def test_status_codes_positions_and_logs_flag(client: httpx.Client) -> None:
    blocker = submit(client, {"prompt": "sleep=0.05 blocker", "num_inference_steps": 20})["request_id"]
    queued = submit(client, {"prompt": "second"})
    wait_running(client, blocker)
    response = client.get(f"{REQUESTS}/{queued['request_id']}/status")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    wait_completed(client, queued["request_id"])
    done = client.get(f"{REQUESTS}/{queued['request_id']}/status", params={"logs": "false"})
    assert done.status_code == 200
    assert done.json()["logs"] is None
    # Python's fal-client sends logs=true, JS logs=1; both turn logs on.
    assert client.get(f"{REQUESTS}/{queued['request_id']}/status", params={"logs": "true"}).json()["logs"]


def test_validation_errors_name_the_field(client: httpx.Client) -> None:
    response = client.post(ENDPOINT, json={"prompt": "x", "depth_scale": 1.5})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "depth_scale"]
    missing = client.post(ENDPOINT)  # the JS client sends no body for an empty input
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "prompt"]
    bad_ratio = client.post(ENDPOINT, json={"prompt": "x", "aspect_ratio": "7:3"})
    assert bad_ratio.json()["detail"][0]["loc"] == ["body", "aspect_ratio"]
    not_json = client.post(ENDPOINT, content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "x", "num_images": 4})["request_id"]
    assert wait_completed(client, request_id)["error"] is None


def test_empty_image_urls_mean_no_condition(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "x", "depth_image_url": "", "canny_image_url": ""})["request_id"]
    status = wait_completed(client, request_id)
    assert status["error"] is None and "maps" not in status["reimagine"]


def test_refused_url_is_a_422_result_naming_the_field(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "x", "depth_image_url": "http://10.0.0.1/secret.png"})["request_id"]
    status = wait_completed(client, request_id)
    assert status["error"]
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", "depth_image_url"]


def test_unreadable_image_is_a_422_result(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "x", "canny_image_url": data_uri(b"not an image")})["request_id"]
    wait_completed(client, request_id)
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", "canny_image_url"]


def test_auth_and_cross_key_visibility(client: httpx.Client, server: ServeProcess) -> None:
    assert httpx.post(server.url + ENDPOINT, json={"prompt": "x"}).status_code == 401
    bad = httpx.post(server.url + ENDPOINT, json={"prompt": "x"}, headers={"Authorization": "Key a:b"})
    assert bad.status_code == 401
    assert bad.json() == {"detail": "No user found for Key ID and Secret"}

    request_id = submit(client, {"prompt": "mine"})["request_id"]
    wait_completed(client, request_id)
    import subprocess
    import sys

    command = [sys.executable, "-m", "reimagine.cli", "keys", "create", "--name", "other"]
    # The server's own store: its data directory, and its PostgreSQL database when it has one.
    store = server.args[server.args.index("--database-url") :][:2] if "--database-url" in server.args else []
    created = subprocess.run(
        [*command, "--data-dir", str(server.data_dir), *store], check=True, capture_output=True, text=True
    )
    other_key = created.stdout.strip().splitlines()[-1]
    other = {"Authorization": f"Key {other_key}"}
    for path in (f"{REQUESTS}/{request_id}", f"{REQUESTS}/{request_id}/status"):
        assert httpx.get(server.url + path, headers=other).status_code == 404
    assert httpx.put(server.url + f"{REQUESTS}/{request_id}/cancel", headers=other).status_code == 404


def test_result_before_completion_is_400(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "sleep=0.05 slow", "num_inference_steps": 20})["request_id"]
    response = client.get(f"{REQUESTS}/{request_id}")
    assert response.status_code == 400
    wait_completed(client, request_id)


def test_unknown_request_is_404(client: httpx.Client) -> None:
    assert client.get(f"{REQUESTS}/nope/status").status_code == 404
    assert client.get(f"{REQUESTS}/nope").status_code == 404
    cancel = client.put(f"{REQUESTS}/nope/cancel")
    assert cancel.status_code == 404 and cancel.json() == {"status": "NOT_FOUND"}


def test_trailing_slash_and_subpath_variants(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "x"})["request_id"]
    wait_completed(client, request_id)
    for path in (f"{REQUESTS}/{request_id}/status/", f"/bria/reimagine/3.2/requests/{request_id}/status"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert client.post(ENDPOINT + "/", json={"prompt": "x"}).status_code == 200


def test_fast_lane_and_fastapi_router_answer_alike(client: httpx.Client, server: ServeProcess) -> None:
    """Submit, status and sync run are served before FastAPI's router (api/fastlane.py); their variants with a
    trailing slash go through the router. Both must give the same answers, errors included."""

    def same(method: str, path: str, **kwargs: object) -> httpx.Response:
        fast, routed = (client.request(method, p, **kwargs) for p in (path, path + "/"))  # type: ignore[arg-type]
        assert fast.status_code == routed.status_code, (path, fast.text, routed.text)
        assert fast.headers["content-type"] == routed.headers["content-type"]
        assert ("x-fal-request-id" in fast.headers) == ("x-fal-request-id" in routed.headers)
        if fast.status_code != 200 or method == "GET":
            assert fast.json() == routed.json(), path
        return fast

    for path in (ENDPOINT, "/run" + ENDPOINT):
        assert same("POST", path, json={"prompt": "x"}).status_code == 200
        assert same("POST", path, json={"prompt": "x", "depth_scale": 3}).status_code == 422
        assert same("POST", path, content=b"{not json").status_code == 422
        assert same("POST", path, json={"prompt": "x"}, headers={"Authorization": "Key a:b"}).status_code == 401
        assert same("POST", path, json={"prompt": "x"}, headers={"Authorization": ""}).status_code == 401
    request_id = submit(client, {"prompt": "x"})["request_id"]
    wait_completed(client, request_id)
    assert same("GET", f"{REQUESTS}/{request_id}/status", params={"logs": "1"}).status_code == 200
    assert same("GET", f"{REQUESTS}/nope/status").status_code == 404
    assert same("GET", f"{REQUESTS}/{request_id}/status", headers={"Authorization": "Key a:b"}).status_code == 401


def test_sse_stream_closes_after_completed_and_resumes(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "sleep=0.01", "num_inference_steps": 20})["request_id"]
    events: list[tuple[int, dict[str, object]]] = []
    with client.stream("GET", f"{REQUESTS}/{request_id}/status/stream", params={"logs": "1"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id = 0
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                events.append((event_id, json.loads(line[6:])))
    assert events[-1][1]["status"] == "COMPLETED"
    messages = [entry["message"] for _, body in events for entry in (body.get("logs") or [])]  # type: ignore[union-attr]
    assert messages.count("Step 20/20") == 1  # incremental logs: each line sent once
    # Resume from the middle: only what came after is replayed, and it still ends with COMPLETED.
    middle = events[len(events) // 2][0]
    with client.stream(
        "GET", f"{REQUESTS}/{request_id}/status/stream", params={"logs": "1"}, headers={"Last-Event-ID": str(middle)}
    ) as response:
        resumed = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert resumed[-1]["status"] == "COMPLETED"
    resumed_messages = [entry["message"] for body in resumed for entry in (body.get("logs") or [])]
    assert "Step 1/20" not in resumed_messages


def test_sync_run_and_sync_mode(client: httpx.Client) -> None:
    response = client.post("/run" + ENDPOINT, json={"prompt": "x", "sync_mode": True, "aspect_ratio": "2:3"})
    assert response.status_code == 200, response.text
    assert response.headers["x-fal-request-id"]
    image = response.json()["image"]
    assert image["url"].startswith("data:image/png;base64,")
    assert (image["width"], image["height"]) == (832, 1216)
    failed = client.post("/run" + ENDPOINT, json={"prompt": "x", "canny_image_url": data_uri(b"junk")})
    assert failed.status_code == 422


def test_run_stream_ends_with_the_result(client: httpx.Client) -> None:
    with client.stream("POST", "/run" + ENDPOINT + "/stream", json={"prompt": "x", "num_inference_steps": 20}) as r:
        assert r.status_code == 200
        bodies = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "image" in bodies[-1]
    assert any(body.get("status") == "IN_PROGRESS" for body in bodies[:-1]) or len(bodies) >= 1


def test_out_of_memory_is_503_with_error_type(client: httpx.Client) -> None:
    request_id = submit(client, {"prompt": "oom"})["request_id"]
    status = wait_completed(client, request_id)
    assert status["error_type"] == "out_of_memory"
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 503
    assert result.json()["error_type"] == "out_of_memory"
    assert result.headers["x-fal-error-type"] == "out_of_memory"


def test_start_timeout_is_504_user(client: httpx.Client) -> None:
    blocker = submit(client, {"prompt": "sleep=0.1 blocker", "num_inference_steps": 30})["request_id"]
    wait_running(client, blocker)
    timed = submit(client, {"prompt": "x"}, headers={"X-Fal-Request-Timeout": "0.5"})["request_id"]
    status = wait_completed(client, timed, timeout_s=10)
    assert status["error_type"] == "request_timeout"
    result = client.get(f"{REQUESTS}/{timed}")
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "user"
    client.put(f"{REQUESTS}/{blocker}/cancel")


def test_priority_low_runs_after_normal(client: httpx.Client) -> None:
    blocker = submit(client, {"prompt": "sleep=0.03 blocker", "num_inference_steps": 20})["request_id"]
    wait_running(client, blocker)
    low = submit(client, {"prompt": "low"}, headers={"X-Fal-Queue-Priority": "low"})["request_id"]
    normal = submit(client, {"prompt": "normal"})["request_id"]
    assert client.get(f"{REQUESTS}/{low}/status").json()["queue_position"] == 1
    assert client.get(f"{REQUESTS}/{normal}/status").json()["queue_position"] == 0
    wait_completed(client, low)


def test_health_and_metrics(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/health/live").status_code == 200
    ready = httpx.get(server.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["workers"]["ready"] == 1
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200
    assert "reimagine_" in metrics.text


def test_openapi_publishes_the_input_schema(server: ServeProcess) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    fields = schema["components"]["schemas"]["ReimagineInput"]["properties"]
    assert fields["num_inference_steps"]["minimum"] == 20 and fields["num_inference_steps"]["maximum"] == 50
    assert fields["seed"]["default"] == 5555
    assert "16:9" in json.dumps(schema["components"]["schemas"])
