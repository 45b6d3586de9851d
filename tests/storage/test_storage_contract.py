"""The `Storage` contract over every backend: a local directory and an S3-compatible server (moto)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pytest

from reimagine.config import Settings
from reimagine.errors import ConfigError
from reimagine.storage import StoredFile, new_key, open_storage
from reimagine.storage.s3 import S3Storage
from tests.storage.conftest import S3Server

MIB = 1024 * 1024


def test_storage_put_get_exists_delete(backend: Any) -> None:
    stored = backend.put(b"png bytes", "image/png", "día.png")
    assert stored == StoredFile(hashlib.sha256(b"png bytes").hexdigest() + ".png", "image/png", "día.png", 9)
    assert backend.get(stored.key) == (stored, b"png bytes")
    assert backend.exists(stored.key)
    chosen = new_key("text/plain")
    assert backend.put(b"hello", "text/plain", key=chosen).key == chosen
    assert backend.get(chosen) == (StoredFile(chosen, "text/plain", None, 5), b"hello")
    backend.delete(stored.key)
    backend.delete(stored.key)  # idempotent
    assert not backend.exists(stored.key)
    with pytest.raises(KeyError):
        backend.get(stored.key)


@pytest.mark.parametrize("key", ["../secret", "ab/../../x", "/etc/passwd", "abc", ""])
def test_storage_rejects_invalid_keys(backend: Any, key: str) -> None:
    assert not backend.exists(key)
    with pytest.raises(ValueError):
        backend.get(key)
    with pytest.raises(ValueError):
        backend.put(b"x", "text/plain", key=key)


def test_storage_multipart_upload(backend: Any) -> None:
    # S3 wants every part but the last to be at least 5 MiB.
    first, last = b"a" * (5 * MIB), b"tail"
    key = new_key("application/octet-stream")
    upload_id = backend.create_multipart(key, "application/octet-stream", "big.bin")
    etag_last = backend.put_part(key, upload_id, 2, last)
    etag_first = backend.put_part(key, upload_id, 1, first)
    assert etag_first == f'"{hashlib.md5(first).hexdigest()}"'
    stored = backend.complete_multipart(key, upload_id, [(2, etag_last), (1, etag_first.strip('"'))])
    assert stored == StoredFile(key, "application/octet-stream", "big.bin", len(first) + len(last))
    assert backend.get(key)[1] == first + last
    # A retried complete (its first answer lost) gets the same file.
    assert backend.complete_multipart(key, upload_id, [(1, etag_first), (2, etag_last)]) == stored


def test_storage_multipart_errors(backend: Any) -> None:
    key = new_key("text/plain")
    upload_id = backend.create_multipart(key, "text/plain")
    with pytest.raises(ValueError):
        backend.put_part(key, upload_id, 0, b"x")
    with pytest.raises(ValueError):
        backend.complete_multipart(key, upload_id, [])
    etag = backend.put_part(key, upload_id, 1, b"only part")
    with pytest.raises(ValueError):
        backend.complete_multipart(key, upload_id, [(1, etag), (1, etag)])
    # S3 answers NoSuchUpload (KeyError); moto 5 answers a 500 for an unknown upload id.
    with pytest.raises(Exception if isinstance(backend, S3Storage) else KeyError):
        backend.put_part(key, "0" * 32, 1, b"x")
    with pytest.raises(KeyError):
        backend.complete_multipart(new_key("text/plain"), upload_id, [(1, etag)])
    assert backend.complete_multipart(key, upload_id, [(1, etag)]).size == 9


def test_storage_delete_older_than(backend: Any) -> None:
    key = backend.put(b"old", "text/plain").key
    assert backend.delete_older_than(3600) == 0
    time.sleep(1.1)
    assert backend.delete_older_than(0.5) == 1
    assert not backend.exists(key)


def test_storage_public_url(backend: Any) -> None:
    key = backend.put(b"x", "text/plain").key
    assert backend.public_url(key) is None, "proxied through the API unless presigning is on"


def test_s3_presigned_url_is_fetchable(s3_server: S3Server) -> None:
    storage = S3Storage(s3_server.create_bucket(), prefix="p/", endpoint_url=s3_server.endpoint_url, presign=True)
    key = storage.put(b"\x89PNG fake", "image/png", "a.png").key
    url = storage.public_url(key)
    assert url is not None and "X-Amz-Signature" in url and "/p/" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG fake" and response.headers["content-type"] == "image/png"


def test_open_storage_picks_s3_from_settings(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    settings = Settings(storage="s3", s3_bucket=bucket, s3_endpoint_url=s3_server.endpoint_url, s3_prefix="x/")
    storage = open_storage(settings)
    key = storage.put(b"through settings", "text/plain").key
    assert s3_server.client().get_object(Bucket=bucket, Key=f"x/{key}")["Body"].read() == b"through settings"
    with pytest.raises(ConfigError):
        open_storage(Settings(storage="s3"))


def test_storage_streams_files_in_and_out(backend: Any, tmp_path: Any) -> None:
    # Issue 13 item 6: files go in from a file and come out in chunks, never whole in memory.
    data = bytes(range(256)) * (9 * 1024)  # 2.25 MiB: three chunks
    staged = tmp_path / "upload.part"
    staged.write_bytes(data)
    key = new_key("application/octet-stream")
    stored = backend.put_file(staged, "application/octet-stream", "big.bin", key=key)
    assert stored == StoredFile(key, "application/octet-stream", "big.bin", len(data)) == backend.stat(key)
    assert not staged.exists()  # consumed
    chunks = list(backend.iter_bytes(key))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= MIB
    assert b"".join(backend.iter_bytes(key, 1000, 1010)) == data[1000:1010]
    assert b"".join(backend.iter_bytes(key, len(data) - 5)) == data[-5:]
    assert b"".join(backend.iter_bytes(key, len(data), len(data))) == b""
    with pytest.raises(KeyError):
        backend.stat(new_key("text/plain"))
