"""Files in an S3-compatible bucket (AWS, MinIO, Ceph, R2...): `<prefix><key>` objects, S3 multipart uploads.

Workers and API replicas on any machine share files through the bucket. Credentials and region come from the
standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, profiles, instance
roles): boto3 reads them, this module never does. File URLs stay the API's `/files/<key>`; with `--s3-presign`
that route answers with a redirect to a freshly presigned GET, so bytes flow from the bucket and no URL handed
out ever expires before the file's retention does.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reimagine.errors import StorageUnavailable
from reimagine.storage import CHUNK_BYTES, StoredFile, is_valid_key

_MAX_PARTS = 10_000
#: lifetime of a presigned GET: a redirect target, used at once
_PRESIGN_TTL_S = 3600


class S3Storage:
    """The `Storage` of multi-machine deployments (`--storage s3`)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        presign: bool = False,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.presign = presign
        if client is None:
            import boto3
            from botocore.config import Config

            # Path-style addressing: S3-compatible servers rarely have per-bucket DNS names.
            config = Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint_url else "auto"})
            client = boto3.client("s3", endpoint_url=endpoint_url or None, config=config)
        self._s3 = client

    def check(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._unavailable(exc) from exc

    def put(
        self, data: bytes, content_type: str, file_name: str | None = None, *, key: str | None = None
    ) -> StoredFile:
        from reimagine.storage import content_key

        key = content_key(data, content_type) if key is None else key
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=self._name(key), Body=data, ContentType=content_type, Metadata=_meta(file_name)
            )
        except Exception as exc:
            raise self._unavailable(exc) if _code(exc) in _NO_BUCKET else exc from exc
        return StoredFile(key, content_type, file_name, len(data))

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        code = _code(exc)
        if code in _NO_BUCKET:
            return StorageUnavailable(f"S3 bucket {self.bucket!r} does not exist: create it")
        if code in ("403", "AccessDenied"):
            return StorageUnavailable(f"S3 bucket {self.bucket!r}: access denied to these credentials")
        return StorageUnavailable(f"S3 bucket {self.bucket!r} cannot be reached: {type(exc).__name__}: {exc}")

    def get(self, key: str) -> tuple[StoredFile, bytes]:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            raise _missing(exc, key) from exc
        data: bytes = answer["Body"].read()
        return _stored(key, answer, len(data)), data

    def put_file(self, path: Path, content_type: str, file_name: str | None = None, *, key: str) -> StoredFile:
        from boto3.s3.transfer import TransferConfig

        # A managed (multipart past 8 MiB) upload read from the file: a few parts in memory at a time.
        size = path.stat().st_size
        try:
            self._s3.upload_file(
                str(path),
                self.bucket,
                self._name(key),
                ExtraArgs={"ContentType": content_type, "Metadata": _meta(file_name)},
                Config=TransferConfig(max_concurrency=4, multipart_chunksize=8 * CHUNK_BYTES),
            )
        except Exception as exc:
            # boto3's transfer manager wraps the client error in its own, keeping only the text.
            if "NoSuchBucket" in str(exc):
                raise StorageUnavailable(f"S3 bucket {self.bucket!r} does not exist: create it") from exc
            raise
        finally:
            path.unlink(missing_ok=True)
        return StoredFile(key, content_type, file_name, size)

    def stat(self, key: str) -> StoredFile:
        return self._head(key)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return iter(())
        byte_range = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=self._name(key), Range=byte_range)
        except Exception as exc:
            if _code(exc) == "InvalidRange":  # `start` at or past the end of the file
                return iter(())
            raise _missing(exc, key) from exc
        body = answer["Body"]
        return _closing(body, body.iter_chunks(CHUNK_BYTES))

    def exists(self, key: str) -> bool:
        if not is_valid_key(key):
            return False
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing object too: deleting twice is fine.
        self._s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    def create_multipart(self, key: str, content_type: str, file_name: str | None = None) -> str:
        try:
            answer = self._s3.create_multipart_upload(
                Bucket=self.bucket, Key=self._name(key), ContentType=content_type, Metadata=_meta(file_name)
            )
        except Exception as exc:
            raise self._unavailable(exc) if _code(exc) in _NO_BUCKET else exc from exc
        upload_id: str = answer["UploadId"]
        return upload_id

    def put_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        _check_part_number(part_number)
        try:
            answer = self._s3.upload_part(
                Bucket=self.bucket, Key=self._name(key), UploadId=upload_id, PartNumber=part_number, Body=data
            )
        except Exception as exc:
            raise _missing(exc, upload_id) from exc
        etag: str = answer["ETag"]
        return etag

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> StoredFile:
        if not parts:
            raise ValueError("a multipart upload needs at least one part")
        ordered = sorted(parts)
        numbers = [number for number, _ in ordered]
        if len(set(numbers)) != len(numbers):
            raise ValueError("part numbers must be unique")
        for number in numbers:
            _check_part_number(number)
        listing = [{"PartNumber": number, "ETag": _quoted(etag)} for number, etag in ordered]
        try:
            self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=self._name(key), UploadId=upload_id, MultipartUpload={"Parts": listing}
            )
        except Exception as exc:
            code = _code(exc)
            if code == "NoSuchUpload":
                # A retried `complete` whose first answer was lost: S3 forgot the upload, the object is there.
                # (An upload that never completed and a wrong key both end here as well, as KeyError.)
                if self.exists(key):
                    return self._head(key)
                raise KeyError(upload_id) from exc
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "InvalidArgument", "MalformedXML"):
                raise ValueError(f"multipart upload {upload_id}: {code}") from exc
            raise
        return self._head(key)

    def delete_older_than(self, age_s: float) -> int:
        cutoff = time.time() - age_s
        removed = 0
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            old = [item["Key"] for item in page.get("Contents", []) if item["LastModified"].timestamp() < cutoff]
            for start in range(0, len(old), 1000):
                batch = [{"Key": name} for name in old[start : start + 1000]]
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                removed += len(batch)
        uploads = self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix).get("Uploads", [])
        for upload in uploads:
            if upload["Initiated"].timestamp() < cutoff:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return removed

    def public_url(self, key: str) -> str | None:
        """A presigned GET when `--s3-presign` is on; None: the API proxies the bytes."""
        if not self.presign:
            return None
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key)}, ExpiresIn=_PRESIGN_TTL_S
        )
        return url

    def _name(self, key: str) -> str:
        if not is_valid_key(key):
            raise ValueError(f"invalid file key {key!r}")
        return self.prefix + key

    def _head(self, key: str) -> StoredFile:
        try:
            answer = self._s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            raise _missing(exc, key) from exc
        return _stored(key, answer, int(answer["ContentLength"]))


_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
#: head_bucket answers a bare 404; the object calls name the code
_NO_BUCKET = frozenset({"NoSuchBucket", "404"})


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _missing(exc: Exception, name: str) -> Exception:
    """KeyError for a missing object or upload (the Protocol's contract); anything else unchanged."""
    return KeyError(name) if _code(exc) in _NOT_FOUND else exc


def _meta(file_name: str | None) -> dict[str, str]:
    # S3 metadata is ASCII-only: the name travels percent-encoded.
    return {"file-name": urllib.parse.quote(file_name)} if file_name else {}


def _stored(key: str, answer: dict[str, Any], size: int) -> StoredFile:
    encoded = answer.get("Metadata", {}).get("file-name")
    file_name = urllib.parse.unquote(encoded) if encoded else None
    return StoredFile(key, answer.get("ContentType") or "application/octet-stream", file_name, size)


def _closing(body: Any, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks, and the HTTP connection released however the iteration ends (a client may hang up)."""
    try:
        yield from chunks
    finally:
        body.close()


def _check_part_number(number: int) -> None:
    if not 1 <= number <= _MAX_PARTS:
        raise ValueError(f"part numbers run from 1 to {_MAX_PARTS}, got {number}")


def _quoted(etag: str) -> str:
    """Clients echo the etag verbatim; accept it with or without the quotes S3 puts around it."""
    return etag if etag.startswith('"') else f'"{etag}"'
