"""The unmodified JS `@fal-ai/client` (pinned in tests/clients/js/package.json) against `reimagine serve`.

Each mode file under tests/clients/js runs as `node --test`; its spec report names the client call that broke.
Modes: proxy (`proxyUrl: {url: ".../api/fal/proxy", when: "always"}`), `requestMiddleware`, custom `fetch`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trustme

from tests.clients.conftest import BROWSER_ORIGIN, ClientEnv, TlsServe, run_logged
from tests.conftest import REPO

JS_DIR = REPO / "tests/clients/js"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS_DIR / "node_modules/@fal-ai/client").is_dir(),
    reason="needs node and tests/clients/js/node_modules (scripts/test-deps.sh runs npm ci)",
)


def run_node(test_file: str, server: TlsServe, env: ClientEnv, timeout_s: float = 120) -> None:
    assert server.key
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("FAL_")},
        "FAL_KEY": server.key,
        "NODE_EXTRA_CA_CERTS": str(env.ca_pem),
        "REIMAGINE_URL": server.url,
        "SCENE_PNG": str(env.scene_png),
    }
    command = ["node", "--test", "--test-reporter=spec", str(JS_DIR / test_file)]
    done = run_logged(command, environment, timeout_s)
    assert done.returncode == 0, f"@fal-ai/client {test_file} failed:\n{done.stdout}"


@pytest.mark.parametrize("mode", ["proxy", "middleware", "fetch"])
def test_js_client(mode: str, client_env: ClientEnv) -> None:
    run_node(f"{mode}.test.mjs", client_env.server, client_env)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_js_client_tiny_model(tiny_server: TlsServe, client_env: ClientEnv) -> None:
    run_node("tiny.test.mjs", tiny_server, client_env, timeout_s=240)


def test_js_client_platform_headers(client_env: ClientEnv) -> None:
    """storageSettings (object lifecycle) on subscribe and upload; Idempotency-Key through `headers`."""
    run_node("platform.test.mjs", client_env.server, client_env)


def test_js_client_one_call_is_one_job_past_the_sync_timeout(
    tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path], client_env: ClientEnv
) -> None:
    """@fal-ai/client retries 504s three times; the sync timeout's 504 must not be one it retries."""
    ca, path = ca_pem
    server = TlsServe(tmp_path_factory.mktemp("serve"), ca, path, "--sync-timeout-s", "1")
    server.start()
    try:
        run_node("synctimeout.test.mjs", server, client_env)
        with server.http(headers=server.headers()) as http:
            metrics = http.get("/metrics").text
    finally:
        server.stop()
    # Every job the server ever made, by status: exactly the one.
    jobs = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("reimagine_jobs{")]
    assert sum(jobs) == 1, metrics


def test_proxy_rejects_missing_or_foreign_target(client_env: ClientEnv) -> None:
    server = client_env.server
    with server.http(headers=server.headers()) as http:
        missing = http.post("/api/fal/proxy", json={"prompt": "x"})
        foreign = http.post(
            "/api/fal/proxy", json={"prompt": "x"}, headers={"x-fal-target-url": "https://example.com/bria/x"}
        )
        loop = http.post("/api/fal/proxy", headers={"x-fal-target-url": "https://queue.fal.run/api/fal/proxy"})
    for response in (missing, foreign, loop):
        assert response.status_code == 400, response.text
        assert response.json()["detail"] == "Invalid request"


def test_cors_preflight_for_a_browser_app(client_env: ClientEnv) -> None:
    """A browser app on another origin may call the proxy and the queue, and read fal's response headers."""
    server = client_env.server
    requested = "authorization,content-type,accept,x-fal-target-url,x-fal-queue-priority,x-fal-request-timeout"
    with server.http() as http:
        for path in ("/api/fal/proxy", "/bria/reimagine/3.2", "/bria/reimagine/requests/abc/status"):
            preflight = http.options(
                path,
                headers={
                    "origin": BROWSER_ORIGIN,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": requested,
                },
            )
            assert preflight.status_code == 200, (path, preflight.status_code, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == BROWSER_ORIGIN
            assert "POST" in preflight.headers["access-control-allow-methods"]
            allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
            assert set(requested.split(",")) <= allowed, allowed
        refused = http.options(
            "/api/fal/proxy",
            headers={"origin": "http://evil.example.test", "access-control-request-method": "POST"},
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        answered = http.post(
            "/api/fal/proxy",
            json={"prompt": "x", "num_inference_steps": 1},
            headers={
                **server.headers(),
                "origin": BROWSER_ORIGIN,
                "x-fal-target-url": "https://fal.run/bria/reimagine/3.2",
            },
        )
    assert answered.status_code == 422
    assert answered.headers["access-control-allow-origin"] == BROWSER_ORIGIN
    exposed = {h.strip().lower() for h in answered.headers["access-control-expose-headers"].split(",")}
    assert {"x-fal-request-id", "x-fal-error-type", "x-fal-request-timeout-type"} <= exposed, exposed
