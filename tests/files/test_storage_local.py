"""LocalStorage: content keys, sidecar metadata, atomic writes, key validation, multipart, expiry."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from reimagine.config import Settings
from reimagine.errors import ConfigError
from reimagine.storage import StoredFile, is_valid_key, new_key, open_storage
from reimagine.storage.local import LocalStorage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")


def test_put_names_a_file_by_its_content(storage: LocalStorage) -> None:
    stored = storage.put(b"png bytes", "image/png", "a.png")
    assert stored == StoredFile(hashlib.sha256(b"png bytes").hexdigest() + ".png", "image/png", "a.png", 9)
    assert storage.get(stored.key) == (stored, b"png bytes")
    assert storage.exists(stored.key)
    assert storage.put(b"png bytes", "image/png").key == stored.key


def test_extension_follows_the_content_type(storage: LocalStorage) -> None:
    assert storage.put(b"x", "image/jpeg").key.endswith(".jpg")
    assert storage.put(b"x", "application/x-unknown-thing").key == hashlib.sha256(b"x").hexdigest()


def test_put_at_a_chosen_key(storage: LocalStorage) -> None:
    key = new_key("image/webp")
    stored = storage.put(b"webp", "image/webp", "w.webp", key=key)
    assert stored.key == key and storage.get(key)[1] == b"webp"


def test_unknown_and_deleted_keys(storage: LocalStorage) -> None:
    key = storage.put(b"gone soon", "text/plain").key
    storage.delete(key)
    storage.delete(key)  # idempotent
    assert not storage.exists(key)
    with pytest.raises(KeyError):
        storage.get(key)


@pytest.mark.parametrize("key", ["../secret", "..", "ab/../../x", "/etc/passwd", "A" * 64, "abc", "0" * 64 + "/x", ""])
def test_keys_are_validated(storage: LocalStorage, key: str) -> None:
    assert not is_valid_key(key)
    assert not storage.exists(key)
    with pytest.raises(ValueError):
        storage.get(key)
    with pytest.raises(ValueError):
        storage.put(b"x", "text/plain", key=key)


def test_writes_leave_no_temporary_files(storage: LocalStorage) -> None:
    stored = storage.put(b"data", "image/png")
    names = sorted(p.name for p in (storage.root / stored.key[:2]).iterdir())
    assert names == [stored.key, stored.key + ".json"]


def test_multipart_parts_joined_in_part_order(storage: LocalStorage) -> None:
    key = new_key("application/octet-stream")
    upload = storage.create_multipart(key, "application/octet-stream", "big.bin")
    etags = {n: storage.put_part(key, upload, n, bytes([n]) * 10) for n in (3, 1, 2)}
    assert etags[1] == f'"{hashlib.md5(bytes([1]) * 10).hexdigest()}"'
    stored = storage.complete_multipart(key, upload, [(2, etags[2]), (3, etags[3]), (1, etags[1])])
    assert stored == StoredFile(key, "application/octet-stream", "big.bin", 30)
    assert storage.get(key)[1] == b"\x01" * 10 + b"\x02" * 10 + b"\x03" * 10
    # A retried complete (lost answer) gets the same file.
    assert storage.complete_multipart(key, upload, [(1, etags[1])]) == stored
    with pytest.raises(ValueError):
        storage.put_part(key, upload, 4, b"late")


def test_multipart_checks_etags_parts_and_keys(storage: LocalStorage) -> None:
    key = new_key("image/png")
    upload = storage.create_multipart(key, "image/png")
    etag = storage.put_part(key, upload, 1, b"one")
    with pytest.raises(ValueError, match="etag"):
        storage.complete_multipart(key, upload, [(1, '"00000000000000000000000000000000"')])
    with pytest.raises(ValueError, match="never uploaded"):
        storage.complete_multipart(key, upload, [(1, etag), (2, etag)])
    with pytest.raises(ValueError, match="part numbers"):
        storage.put_part(key, upload, 0, b"x")
    with pytest.raises(KeyError):
        storage.put_part(new_key("image/png"), upload, 1, b"x")  # another key
    with pytest.raises(KeyError):
        storage.put_part(key, "f" * 32, 1, b"x")
    with pytest.raises(KeyError):
        storage.put_part(key, "../../etc", 1, b"x")
    assert not storage.exists(key)
    assert storage.complete_multipart(key, upload, [(1, etag.strip('"'))]).size == 3


def test_delete_older_than(storage: LocalStorage) -> None:
    old = storage.put(b"old", "text/plain").key
    new = storage.put(b"new", "text/plain").key
    stale_upload = storage.create_multipart(new_key("text/plain"), "text/plain")
    past = time.time() - 7200
    os.utime(storage.root / old[:2] / (old + ".json"), (past, past))
    os.utime(storage.root / ".uploads" / stale_upload, (past, past))
    assert storage.delete_older_than(3600) == 1
    assert not storage.exists(old) and storage.exists(new)
    assert not (storage.root / ".uploads" / stale_upload).exists()


def test_open_storage(tmp_path: Path) -> None:
    assert isinstance(open_storage(Settings(data_dir=tmp_path)), LocalStorage)
    with pytest.raises(ConfigError):
        open_storage(Settings(data_dir=tmp_path, storage="s3"))
