"""`reimagine serve --storage s3`: workers write results to the bucket; `/files/<key>` proxies or redirects."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServeProcess
from tests.storage.conftest import AWS_ENV, S3Server


@pytest.mark.parametrize("presign", [False, True])
def test_s3_serve_results_live_in_the_bucket(s3_server: S3Server, tmp_path: Path, presign: bool) -> None:
    bucket = s3_server.create_bucket()
    flags = ["--storage", "s3", "--s3-endpoint-url", s3_server.endpoint_url, "--s3-bucket", bucket]
    api = ServeProcess(tmp_path, *flags, "--s3-presign" if presign else "--no-s3-presign", env=AWS_ENV).start()
    try:
        with httpx.Client(base_url=api.url, headers=api.headers(), timeout=30) as client:
            request_id = client.post("/bria/reimagine/3.2", json={"prompt": "a cat"}).json()["request_id"]
            deadline = time.monotonic() + 30
            while client.get(f"/bria/reimagine/requests/{request_id}/status").json()["status"] != "COMPLETED":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            url = client.get(f"/bria/reimagine/requests/{request_id}").json()["image"]["url"]
            assert url.startswith(api.url + "/files/"), "handed-out URLs are the API's, stable"
            key = url.rsplit("/", 1)[1]
            stored = s3_server.client().get_object(Bucket=bucket, Key=f"reimagine/{key}")["Body"].read()
            direct = httpx.get(url)
            if presign:
                assert direct.status_code == 307 and "X-Amz-Signature" in direct.headers["location"]
                direct = httpx.get(direct.headers["location"])
            assert direct.status_code == 200 and direct.content == stored and stored[:4] == b"\x89PNG"
            assert httpx.get(f"{api.url}/files/{'0' * 64}.png").status_code == 404
    finally:
        api.stop()


def test_a_missing_bucket_is_named_by_readiness_and_uploads(s3_server: S3Server, tmp_path: Path) -> None:
    flags = ["--storage", "s3", "--s3-endpoint-url", s3_server.endpoint_url, "--s3-bucket", "no-such-bucket"]
    api = ServeProcess(tmp_path, *flags, "--workers", "0", env=AWS_ENV).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(api.url + "/health/ready", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert ready.status_code == 503 and "'no-such-bucket' does not exist" in ready.json()["storage"]
        upload = httpx.post(
            api.url + "/storage/upload/initiate-multipart",
            json={"content_type": "image/png", "file_name": "a.png"},
            headers=api.headers(),
        )
        assert upload.status_code == 503 and "'no-such-bucket'" in upload.json()["detail"], upload.text
        assert upload.json()["error_type"] == "storage_unavailable"
    finally:
        api.stop()
