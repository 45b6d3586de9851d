"""Files in a local directory: `<root>/<key[:2]>/<key>` plus a `<key>.json` sidecar with its metadata.

Every write goes to a temporary file in the same directory and is renamed into place, so readers (the API serving a
file while a worker writes one) see either nothing or the whole file. The sidecar is written last: a file exists
once its sidecar does.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from reimagine.errors import StorageUnavailable
from reimagine.storage import CHUNK_BYTES, StoredFile, content_key, is_valid_key

_UPLOADS = ".uploads"
_MAX_PARTS = 10_000


class LocalStorage:
    """The default `Storage`: one machine, one directory (`settings.files_dir`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / _UPLOADS).mkdir(parents=True, exist_ok=True)
        #: shard directories known to exist (they are never removed), so a write skips the mkdir call
        self._dirs: set[Path] = set()

    def check(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"the files directory {self.root} is missing or not writable")

    def put(
        self, data: bytes, content_type: str, file_name: str | None = None, *, key: str | None = None
    ) -> StoredFile:
        by_content = key is None
        key = content_key(data, content_type) if key is None else key
        path = self._path(key)
        stored = StoredFile(key, content_type, file_name, len(data))
        if by_content and self._refresh(stored):
            return stored
        if path.parent not in self._dirs:
            path.parent.mkdir(exist_ok=True)
            self._dirs.add(path.parent)
        _write_atomic(path, lambda out: out.write(data))
        return self._write_meta(stored)

    def _refresh(self, stored: StoredFile) -> bool:
        """A content-addressed file already stored with the same metadata holds these very bytes: keep it.

        Its sidecar's mtime is refreshed, as a rewrite would, so that age-based sweeps treat it as new.
        """
        try:
            if self._read_meta(stored.key) != stored:
                return False
            os.utime(self._meta_path(stored.key))
        except (KeyError, OSError, ValueError):
            return False
        return True

    def get(self, key: str) -> tuple[StoredFile, bytes]:
        stored = self._read_meta(key)
        return stored, self._path(key).read_bytes()

    def put_file(self, path: Path, content_type: str, file_name: str | None = None, *, key: str) -> StoredFile:
        target = self._path(key)
        stored = StoredFile(key, content_type, file_name, path.stat().st_size)
        if target.parent not in self._dirs:
            target.parent.mkdir(exist_ok=True)
            self._dirs.add(target.parent)
        try:
            os.replace(path, target)  # same file system (the API stages uploads in the data directory)
        except OSError:
            _write_atomic(target, lambda out: _copy_file(path, out))
            path.unlink()
        return self._write_meta(stored)

    def stat(self, key: str) -> StoredFile:
        return self._read_meta(key)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        stored = self._read_meta(key)
        end = stored.size if end is None else min(end, stored.size)
        handle = self._path(key).open("rb")
        return _chunks(handle, start, end)

    def exists(self, key: str) -> bool:
        return is_valid_key(key) and self._meta_path(key).exists()

    def delete(self, key: str) -> None:
        # Sidecar first: the file stops existing before its bytes go.
        self._meta_path(key).unlink(missing_ok=True)
        self._path(key).unlink(missing_ok=True)

    def create_multipart(self, key: str, content_type: str, file_name: str | None = None) -> str:
        self._path(key)  # validates the key
        upload_id = secrets.token_hex(16)
        folder = self.root / _UPLOADS / upload_id
        folder.mkdir()
        meta = {"key": key, "content_type": content_type, "file_name": file_name, "completed": False}
        _write_atomic(folder / "upload.json", lambda out: out.write(json.dumps(meta).encode()))
        return upload_id

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        folder, meta = self._upload(key, upload_id)
        if meta["completed"]:
            raise ValueError(f"upload {upload_id} is already complete")
        _check_part_number(part_number)
        _write_atomic(folder / f"part-{part_number:05d}", lambda out: out.write(data))
        return _etag(data)

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> StoredFile:
        folder, meta = self._upload(key, upload_id)
        if meta["completed"]:
            return self._read_meta(key)
        if not parts:
            raise ValueError("a multipart upload needs at least one part")
        ordered = sorted(parts)
        numbers = [number for number, _ in ordered]
        if len(set(numbers)) != len(numbers):
            raise ValueError("part numbers must be unique")

        def join(out: BinaryIO) -> None:
            for number, etag in ordered:
                _check_part_number(number)
                part = folder / f"part-{number:05d}"
                if not part.exists():
                    raise ValueError(f"part {number} was never uploaded")
                data = part.read_bytes()
                if _etag(data) != _quoted(etag):
                    raise ValueError(f"part {number}: etag {etag} does not match the uploaded part")
                out.write(data)

        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        _write_atomic(path, join)
        stored = self._write_meta(StoredFile(key, meta["content_type"], meta["file_name"], path.stat().st_size))
        # Parts go, the record stays (marked complete) so that a retried `complete` gets the same answer.
        for part in folder.glob("part-*"):
            part.unlink()
        meta["completed"] = True
        _write_atomic(folder / "upload.json", lambda out: out.write(json.dumps(meta).encode()))
        return stored

    def delete_older_than(self, age_s: float) -> int:
        cutoff = time.time() - age_s
        removed = 0
        for meta_path in self.root.glob("??/*.json"):
            key = meta_path.name.removesuffix(".json")
            if is_valid_key(key) and meta_path.stat().st_mtime < cutoff:
                self.delete(key)
                removed += 1
        for folder in (self.root / _UPLOADS).iterdir():
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        return removed

    def public_url(self, key: str) -> str | None:
        """Local files are only reachable through the API."""
        return None

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"invalid file key {key!r}")
        return self.root / key[:2] / key

    def _meta_path(self, key: str) -> Path:
        path = self._path(key)
        return path.with_name(path.name + ".json")

    def _read_meta(self, key: str) -> StoredFile:
        try:
            meta = json.loads(self._meta_path(key).read_bytes())
        except FileNotFoundError:
            raise KeyError(key) from None
        return StoredFile(key, meta["content_type"], meta["file_name"], meta["size"])

    def _write_meta(self, stored: StoredFile) -> StoredFile:
        meta = {"content_type": stored.content_type, "file_name": stored.file_name, "size": stored.size}
        _write_atomic(self._meta_path(stored.key), lambda out: out.write(json.dumps(meta).encode()))
        return stored

    def _upload(self, key: str, upload_id: str) -> tuple[Path, dict[str, Any]]:
        if not (len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)):
            raise KeyError(upload_id)
        folder = self.root / _UPLOADS / upload_id
        try:
            meta: dict[str, Any] = json.loads((folder / "upload.json").read_bytes())
        except FileNotFoundError:
            raise KeyError(upload_id) from None
        if meta["key"] != key:
            raise KeyError(upload_id)
        return folder, meta


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    # A unique temporary name in the same directory (O_EXCL: never another writer's), then an atomic rename.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _chunks(handle: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            chunk = handle.read(min(CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _copy_file(path: Path, out: BinaryIO) -> None:
    with path.open("rb") as source:
        shutil.copyfileobj(source, out, CHUNK_BYTES)


def _check_part_number(number: int) -> None:
    if not 1 <= number <= _MAX_PARTS:
        raise ValueError(f"part numbers run from 1 to {_MAX_PARTS}, got {number}")


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _quoted(etag: str) -> str:
    """Clients echo the etag verbatim; accept it with or without the quotes S3 puts around it."""
    return etag if etag.startswith('"') else f'"{etag}"'
