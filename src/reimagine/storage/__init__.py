"""Where files live: the `Storage` Protocol, file keys and `open_storage(settings)`.

Keys are flat, URL-safe and unguessable, since `GET /files/<key>` serves a file to whoever knows its key:
- `put` without a key names a file by its content: sha256 hex plus an extension from the content type;
- uploads whose URL is handed out before the bytes exist (signed PUTs, multipart) get a random `new_key`.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reimagine.config import Settings
from reimagine.errors import ConfigError

#: Chunk size of streamed reads and writes: what one upload or download holds in memory at a time.
CHUNK_BYTES = 1024 * 1024
_KEY = re.compile(r"[0-9a-f]{32,64}(\.[a-z0-9]{1,16})?")
_EXTENSION = re.compile(r"\.[a-z0-9]{1,16}")


@dataclass(frozen=True)
class StoredFile:
    key: str
    content_type: str
    file_name: str | None
    size: int


class Storage(Protocol):
    """A flat key → bytes store with S3-style multipart uploads.

    Unknown keys and upload ids raise `KeyError`; an invalid key, part number or etag raises `ValueError`.
    """

    def put(
        self, data: bytes, content_type: str, file_name: str | None = None, *, key: str | None = None
    ) -> StoredFile:
        """Store `data` under `key`, or under its content key when None; replaces an existing file."""
        ...

    def get(self, key: str) -> tuple[StoredFile, bytes]:
        """The whole file in memory: for images the worker reads; the API streams with `iter_bytes`."""
        ...

    def put_file(self, path: Path, content_type: str, file_name: str | None = None, *, key: str) -> StoredFile:
        """Store the file at `path` (which this call consumes) under `key`, never holding it whole in memory."""
        ...

    def stat(self, key: str) -> StoredFile:
        """The file's metadata and size, without its bytes."""
        ...

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes `start` to `end` (exclusive; None: the end of the file) in chunks of at most `CHUNK_BYTES`."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove a file; a missing one is not an error (retention sweeps race with each other)."""
        ...

    def create_multipart(self, key: str, content_type: str, file_name: str | None = None) -> str:
        """Start an upload that will land at `key`; returns its upload id."""
        ...

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """Store part `part_number` (1-10000); returns its etag, the quoted MD5 hex like S3."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> StoredFile:
        """Join the listed `(part_number, etag)` parts in part order (clients list them as they finish).

        Completing an already completed upload returns the file again: clients retry when an answer is lost.
        """
        ...

    def delete_older_than(self, age_s: float) -> int:
        """Remove files and unfinished uploads older than `age_s`; returns how many files went."""
        ...

    def public_url(self, key: str) -> str | None:
        """Where clients may fetch the file directly (a presigned S3 GET); None: `GET /files/<key>` proxies it."""
        ...

    def check(self) -> None:
        """Raise `StorageUnavailable` (naming the bucket or directory) unless files can be stored (readiness)."""
        ...


def extension_for(content_type: str) -> str:
    """`.png` for `image/png`; empty when the type is unknown."""
    extension = mimetypes.guess_extension(content_type.split(";")[0].strip().lower()) or ""
    return extension if _EXTENSION.fullmatch(extension) else ""


def content_key(data: bytes, content_type: str) -> str:
    return hashlib.sha256(data).hexdigest() + extension_for(content_type)


def new_key(content_type: str) -> str:
    """A random key for a file whose URL is given out before its bytes exist."""
    return secrets.token_hex(16) + extension_for(content_type)


def is_valid_key(key: str) -> bool:
    """Keys are checked before they reach a path or an object name (no `..`, no `/`)."""
    return _KEY.fullmatch(key) is not None


def open_storage(settings: Settings) -> Storage:
    """The backend `settings.storage` names."""
    if settings.storage == "local":
        from reimagine.storage.local import LocalStorage

        return LocalStorage(settings.files_dir)
    if settings.storage == "s3":
        if not settings.s3_bucket:
            raise ConfigError("--storage s3 needs --s3-bucket (REIMAGINE_S3_BUCKET)")
        from reimagine.storage.s3 import S3Storage

        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            presign=settings.s3_presign,
        )
    raise ConfigError(f"storage must be local or s3, got {settings.storage!r}")
