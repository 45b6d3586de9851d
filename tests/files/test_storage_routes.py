"""Storage routes against the unmodified Python fal client (uvicorn on loopback) and raw HTTP; signing."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client as fal_module
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from reimagine.api.app import create_app
from reimagine.api.state import app_state
from reimagine.config import Settings
from reimagine.queue.keys import KeyGrant, Scope
from reimagine.signing import load_secret, make_token, read_token
from reimagine.storage.local import LocalStorage
from tests.files.conftest import AppServer, png_bytes

KEY = "key-id:key-secret"


def make_app(tmp_path: Path, **overrides: object) -> FastAPI:
    """The whole app in this process, with no workers (the storage routes need none), and one known key."""
    settings = Settings(data_dir=tmp_path, workers=0, offline=True, **overrides)  # type: ignore[arg-type]
    app = create_app(settings, storage=LocalStorage(settings.files_dir))
    app_state(app).authenticate = lambda key: KeyGrant("key-id", "test", Scope.ADMIN) if key == KEY else None
    return app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(make_app(tmp_path, max_upload_bytes=1000))


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppServer]:
    with AppServer(make_app(tmp_path)) as running:
        # fal-protocol.md §11.1 B: the storage hosts are module constants, read at call time.
        monkeypatch.setattr(fal_module, "REST_URL", running.url)
        monkeypatch.setattr(fal_module, "CDN_URL", running.url)
        yield running


def fetch_back(url: str) -> httpx.Response:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return response


# --- the real Python client -------------------------------------------------------------------------------------


def test_fal_client_upload(server: AppServer) -> None:
    client = fal_client.SyncClient(key=KEY)
    url = client.upload(b"plain text", "text/plain", "notes.txt")
    assert url.startswith(server.url + "/files/")
    response = fetch_back(url)
    assert response.content == b"plain text"
    assert response.headers["content-type"].startswith("text/plain")
    assert "max-age" in response.headers["cache-control"]


def test_fal_client_upload_file_and_image(server: AppServer, tmp_path: Path) -> None:
    client = fal_client.SyncClient(key=KEY)
    path = tmp_path / "scene.png"
    path.write_bytes(png_bytes((20, 10)))
    response = fetch_back(client.upload_file(path))
    assert response.content == path.read_bytes()
    assert response.headers["content-type"] == "image/png"
    assert "scene.png" in response.headers["content-disposition"]

    image = Image.new("RGB", (30, 20), (0, 128, 255))
    response = fetch_back(client.upload_image(image))
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"


def test_fal_client_signed_upload_fallback(server: AppServer) -> None:
    # repository="fal": initiate + PUT to the signed URL, with the client's Key header leaking onto the PUT.
    client = fal_client.SyncClient(key=KEY)
    url = client.upload(b"\x00\x01binary", "application/octet-stream", "x.bin", repository="fal")
    assert fetch_back(url).content == b"\x00\x01binary"


def test_fal_client_multipart(server: AppServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_module, "MULTIPART_THRESHOLD", 100_000)
    monkeypatch.setattr(fal_module, "MULTIPART_CHUNK_SIZE", 64 * 1024)
    data = os.urandom(1_000_000)  # 16 parts, sent by 10 threads: they complete out of order
    client = fal_client.SyncClient(key=KEY)
    url = client.upload(data, "application/octet-stream", "big.bin")
    response = fetch_back(url)
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"


def test_fal_client_wrong_key(server: AppServer) -> None:
    client = fal_client.SyncClient(key="key-id:wrong")
    with pytest.raises(Exception, match="401|No user found"):
        client.upload(b"x", "text/plain")


# --- the JS client's calls, as it sends them (no auth on PUTs; JSON part answers) -----------------------------------


def test_js_style_single_upload(client: TestClient) -> None:
    initiated = client.post(
        "/storage/upload/initiate?storage_type=fal-cdn-v3",
        json={"content_type": "image/png", "file_name": "1700000000.png"},
        headers={"Authorization": f"Key {KEY}"},
    )
    assert initiated.status_code == 200 and initiated.headers["content-type"] == "application/json"
    urls = initiated.json()
    assert urls["file_url"].endswith(".png")
    assert client.put(urls["upload_url"], content=b"png", headers={"Content-Type": "image/png"}).status_code == 200
    got = client.get(urls["file_url"])
    assert got.content == b"png" and got.headers["content-type"] == "image/png"


def test_js_style_multipart(client: TestClient) -> None:
    initiated = client.post(
        "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
        json={"content_type": "application/octet-stream", "file_name": "big.octet"},
        headers={"Authorization": f"Key {KEY}"},
    ).json()
    base = httpx.URL(initiated["upload_url"])
    parts = []
    for n, chunk in enumerate([b"a" * 300, b"b" * 300, b"c" * 10], start=1):
        answer = client.put(str(base.copy_with(path=f"{base.path}/{n}")), content=chunk)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        assert answer.json()["etag"] == answer.headers["etag"]
        parts.append(answer.json())
    done = client.post(str(base.copy_with(path=f"{base.path}/complete")), json={"parts": parts[::-1]})
    assert done.status_code == 200, done.text
    assert client.get(initiated["file_url"]).content == b"a" * 300 + b"b" * 300 + b"c" * 10


# --- refusals ----------------------------------------------------------------------------------------------------


def test_auth_required(client: TestClient) -> None:
    for path in ("/storage/auth/token", "/storage/upload/initiate", "/storage/upload/initiate-multipart"):
        response = client.post(path, json={}, headers={"Authorization": "Key nope:nope"})
        assert response.status_code == 401 and response.json() == {"detail": "No user found for Key ID and Secret"}
    for path in ("/files/upload", "/files/upload/multipart"):
        assert client.post(path, content=b"x", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_cdn_token_shape(client: TestClient) -> None:
    token = client.post("/storage/auth/token?storage_type=fal-cdn-v3", headers={"Authorization": f"Key {KEY}"}).json()
    assert token["token_type"] == "Bearer" and token["base_url"] == "http://testserver"
    assert token["expires_at"].endswith("+00:00")


def test_signed_put_refuses_bad_or_reused_signatures(client: TestClient) -> None:
    auth = {"Authorization": f"Key {KEY}"}
    first = client.post("/storage/upload/initiate", json={"content_type": "text/plain"}, headers=auth).json()
    second = client.post("/storage/upload/initiate", json={"content_type": "text/plain"}, headers=auth).json()
    assert first["file_url"] != second["file_url"]
    token = first["upload_url"].split("token=")[1]
    assert client.put(f"{second['file_url']}?token={token}", content=b"x").status_code == 403
    assert client.put(second["file_url"], content=b"x").status_code == 403
    assert client.put(second["upload_url"] + "0", content=b"x").status_code == 403


def test_multipart_part_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Parts are held in memory: one may not be as large as a whole upload.
    monkeypatch.setattr("reimagine.api.routes.storage.MAX_PART_BYTES", 100)
    client = TestClient(make_app(tmp_path))
    token = client.post("/storage/auth/token", headers={"Authorization": f"Key {KEY}"}).json()["token"]
    multipart = client.post("/files/upload/multipart", headers={"Authorization": f"Bearer {token}"}).json()
    part_url = f"{multipart['access_url']}/multipart/{multipart['uploadId']}"
    too_large = client.put(f"{part_url}/1", content=b"y" * 101)
    assert too_large.status_code == 413 and "Part is larger than the 100 byte limit" in too_large.json()["detail"]
    assert client.put(f"{part_url}/1", content=b"y" * 100).status_code == 200


def test_upload_size_cap(client: TestClient) -> None:
    token = client.post("/storage/auth/token", headers={"Authorization": f"Key {KEY}"}).json()["token"]
    response = client.post("/files/upload", content=b"x" * 1001, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 413 and "1000 byte limit" in response.json()["detail"]

    multipart = client.post("/files/upload/multipart", headers={"Authorization": f"Bearer {token}"}).json()
    part_url = f"{multipart['access_url']}/multipart/{multipart['uploadId']}"
    etags = [client.put(f"{part_url}/{n}", content=b"y" * 600).headers["etag"] for n in (1, 2)]
    done = client.post(
        f"{part_url}/complete",
        json={"parts": [{"partNumber": n, "etag": e} for n, e in [(1, etags[0]), (2, etags[1])]]},
    )
    assert done.status_code == 413
    assert client.get(multipart["access_url"]).status_code == 404


def test_uploaded_pages_are_served_sandboxed(client: TestClient) -> None:
    # Files share the playground's origin (and its API key in localStorage): an uploaded page must not run script.
    auth = {"Authorization": f"Key {KEY}"}
    initiated = client.post("/storage/upload/initiate", json={"content_type": "text/html"}, headers=auth).json()
    assert client.put(initiated["upload_url"], content=b"<script>alert(1)</script>").status_code == 200
    got = client.get(initiated["file_url"])
    assert got.headers["content-type"].startswith("text/html")
    assert got.headers["content-security-policy"] == "sandbox"


@pytest.mark.parametrize("content_type", ["text/plain\r\nX-Injected: 1", "image/png\x00", "text/plain\u20ac"])
def test_initiate_refuses_content_types_that_cannot_be_served(client: TestClient, content_type: str) -> None:
    auth = {"Authorization": f"Key {KEY}"}
    for path in ("/storage/upload/initiate", "/storage/upload/initiate-multipart"):
        response = client.post(path, json={"content_type": content_type}, headers=auth)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "content_type"]


def test_unknown_files_and_uploads(client: TestClient) -> None:
    for path in (f"/files/{'a' * 64}.png", "/files/..%2Fsecret.key", "/files/nope"):
        response = client.get(path)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json"
        assert "not found" in response.json()["detail"].lower()
    assert client.put(f"/files/{'a' * 32}/multipart/forged/1", content=b"x").status_code == 404


# --- signing -----------------------------------------------------------------------------------------------------


def test_secret_is_created_private_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = load_secret(settings)
    assert len(secret) == 32 and load_secret(settings) == secret
    assert stat.S_IMODE((tmp_path / "data" / "secret.key").stat().st_mode) == 0o600


def test_tokens_bind_purpose_subject_and_expiry() -> None:
    token = make_token(b"s" * 32, "upload-put", "subject/ü", ttl_s=60, now=1000)
    assert read_token(b"s" * 32, "upload-put", token, now=1059) == "subject/ü"
    assert read_token(b"s" * 32, "upload-put", token, now=1061) is None
    assert read_token(b"s" * 32, "cdn-token", token, now=1000) is None
    assert read_token(b"t" * 32, "upload-put", token, now=1000) is None
    encoded, expires, mac = token.split(".")
    assert read_token(b"s" * 32, "upload-put", f"{encoded}.{int(expires) + 100}.{mac}", now=1000) is None
    assert read_token(b"s" * 32, "upload-put", "garbage", now=1000) is None
