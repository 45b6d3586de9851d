"""File uploads and downloads as both fal clients speak them (fal-protocol.md §8).

URL layout (all absolute, under this server's base URL):

    POST /storage/auth/token                      Key auth → CDN token (Python client, §8.1 A)
    POST /files/upload                            Bearer CDN token, raw body → content-keyed file (§8.1 B)
    POST /files/upload/multipart                  Bearer CDN token → {access_url, uploadId} (§8.1 C)
    POST /storage/upload/initiate                 Key auth → signed PUT URL + file URL (§8.1 D, §8.2)
    POST /storage/upload/initiate-multipart       Key auth → multipart URL + file URL (§8.2)
    PUT  /files/{key}?token=...                   signed single-shot upload
    PUT  /files/{key}/multipart/{upload}/{n}      one part; ETag header and {"partNumber","etag"} body
    POST /files/{key}/multipart/{upload}/complete {"parts": [...]}
    GET  /files/{key}                             the file, no auth: the key is the secret

Files uploaded before their URL is known get a random key; `{upload}` is a signed token binding the storage
upload id to that key, so part PUTs need no other auth (the JS client sends none).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from reimagine.api.auth import SubmitKeyDep
from reimagine.api.deps import SettingsDep, StorageDep
from reimagine.api.platform import UPLOAD_LIFECYCLE_HEADERS, lifecycle_ttl_s
from reimagine.api.reads import read
from reimagine.api.state import state_of
from reimagine.api.urls import base_url
from reimagine.api.wire import validation_detail
from reimagine.config import Settings
from reimagine.errors import InputError
from reimagine.signing import load_secret, make_token, read_token, token_expiry
from reimagine.storage import Storage, StoredFile, extension_for, is_valid_key, new_key

router = APIRouter(tags=["storage"])

CDN_TOKEN_TTL_S = 3600.0
UPLOAD_URL_TTL_S = 3600.0
MULTIPART_TTL_S = 24 * 3600.0
#: One multipart part, held in memory while it is received: fal's clients send 10 MiB parts, S3 takes at most 5 GiB.
#: Without this bound a single part could be as large as a whole upload (`--max-upload-bytes`, 1 GiB by default).
MAX_PART_BYTES = 100 * 1024 * 1024
CACHE_CONTROL = "public, max-age=86400"
#: Files are served from the API's own origin, where the playground keeps its key in localStorage, with the
#: content type their uploader chose: an uploaded HTML or SVG page opened from its URL must not run script there.
#: `sandbox` gives such a page an opaque origin and no scripts; images embedded elsewhere are unaffected.
_SANDBOX = {"Content-Security-Policy": "sandbox"}
#: ...and no browser may guess another type than the one sent (an "image" that sniffs as HTML).
_NOSNIFF = {"X-Content-Type-Options": "nosniff"}
#: Where uploads are written as they arrive, inside the data directory (the local storage renames them into place).
_STAGING = ".incoming"
#: Bytes of an upload gathered in memory before they are written to the staging file.
STAGE_CHUNK_BYTES = 1024 * 1024
#: The largest JSON body of the storage routes (an upload's name and type, a list of parts).
MAX_JSON_BODY_BYTES = 1024 * 1024
_CDN, _PUT, _MULTIPART = "cdn-token", "upload-put", "upload-multipart"


class InitiateUpload(BaseModel):
    file_name: str = Field("upload.bin", max_length=1024)
    # Sent back as the file's Content-Type header: a control or non-ASCII character would make it unservable.
    content_type: str = Field("application/octet-stream", max_length=255, pattern=r"^[\x20-\x7e]*$")


class Part(BaseModel):
    part_number: int = Field(alias="partNumber")
    etag: str = Field(max_length=128)


class CompleteUpload(BaseModel):
    parts: list[Part] = Field(max_length=10_000)


_Body = TypeVar("_Body", bound=BaseModel)


def _json_body(body: bytes, model: type[_Body]) -> _Body:
    """A JSON body parsed after authentication (FastAPI would parse it first: a 422 before the 401)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(status_code=422, detail=validation_detail(exc)) from None


def _json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that parses its body itself (`_json_body`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _secret(request: Request) -> bytes:
    # Read once per app: the file never changes while the server runs.
    secret: bytes | None = state_of(request).signing_secret
    if secret is None:
        secret = load_secret(state_of(request).settings)
        state_of(request).signing_secret = secret
    return secret


SecretDep = Annotated[bytes, Depends(_secret)]


def _require_cdn_token(request: Request, secret: SecretDep) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    subject = read_token(secret, _CDN, token.strip()) if scheme.lower() == "bearer" else None
    if subject is None:
        raise HTTPException(status_code=401, detail="Missing, invalid or expired upload token")
    return subject


CdnTokenDep = Annotated[str, Depends(_require_cdn_token)]


@router.post("/storage/auth/token")
def create_cdn_token(request: Request, key_id: SubmitKeyDep, settings: SettingsDep, secret: SecretDep) -> JSONResponse:
    """A short-lived upload token for the Python client's CDN uploads."""
    token = make_token(secret, _CDN, key_id, ttl_s=CDN_TOKEN_TTL_S)
    return JSONResponse(
        {
            "token": token,
            "token_type": "Bearer",
            "base_url": base_url(request, settings),
            "expires_at": datetime.fromtimestamp(token_expiry(token), UTC).isoformat(),
        }
    )


def _upload_ttl_s(request: Request) -> float | None:
    """`X-Fal-Object-Lifecycle(-Preference)` of an upload: seconds until the file expires, or None (retention)."""
    for header in UPLOAD_LIFECYCLE_HEADERS:
        raw = request.headers.get(header)
        if raw is not None:
            try:
                return lifecycle_ttl_s(raw, header)
            except InputError as exc:
                raise HTTPException(
                    status_code=422, detail=[{"loc": ["header", header], "msg": exc.message, "type": "value_error"}]
                ) from None
    return None


async def _expire_upload(request: Request, key: str, key_id: str, content_type: str, ttl_s: float | None) -> None:
    """Record an upload's own expiry (the sweep deletes it then; until the sweep, it answers 410)."""
    if ttl_s is not None:
        store = state_of(request).store
        await run_in_threadpool(store.add_upload, key, key_id=key_id, content_type=content_type, ttl_s=ttl_s)


@router.post("/files/upload")
async def upload_file(
    request: Request, key_id: CdnTokenDep, settings: SettingsDep, storage: StorageDep
) -> JSONResponse:
    """Single-shot upload: the body is the file."""
    ttl_s = _upload_ttl_s(request)
    content_type = request.headers.get("content-type") or "application/octet-stream"
    file_name = request.headers.get("x-fal-file-name") or None
    async with _staged_body(request, settings) as (path, digest):
        # Content-keyed (the same bytes are one file); a file with its own expiry gets a key of its own, so that
        # its expiry cannot cut short another upload of the same bytes.
        key = digest.hexdigest() + extension_for(content_type) if ttl_s is None else new_key(content_type)
        stored: StoredFile = await run_in_threadpool(storage.put_file, path, content_type, file_name, key=key)
    await _expire_upload(request, stored.key, key_id, content_type, ttl_s)
    return JSONResponse(_described(stored, _file_url(request, settings, stored.key)))


@router.post("/files/upload/multipart")
async def create_multipart_upload(
    request: Request, key_id: CdnTokenDep, settings: SettingsDep, storage: StorageDep, secret: SecretDep
) -> JSONResponse:
    """Start a Python-client multipart upload; the file will be served at `access_url`."""
    ttl_s = _upload_ttl_s(request)
    content_type = request.headers.get("content-type") or "application/octet-stream"
    key, upload = await _start_multipart(storage, secret, content_type, request.headers.get("x-fal-file-name"))
    await _expire_upload(request, key, key_id, content_type, ttl_s)
    return JSONResponse({"access_url": _file_url(request, settings, key), "uploadId": upload})


@router.post("/storage/upload/initiate", openapi_extra=_json_request_body(InitiateUpload))
async def initiate_upload(
    request: Request, key_id: SubmitKeyDep, settings: SettingsDep, secret: SecretDep
) -> JSONResponse:
    """A signed PUT URL for one file (Python `fal` repository, JS single-shot)."""
    ttl_s = _upload_ttl_s(request)
    body = _json_body(await _read_body(request, MAX_JSON_BODY_BYTES, "Body"), InitiateUpload)
    key = new_key(body.content_type)
    await _expire_upload(request, key, key_id, body.content_type, ttl_s)
    subject = json.dumps({"key": key, "file_name": body.file_name, "content_type": body.content_type})
    token = make_token(secret, _PUT, subject, ttl_s=UPLOAD_URL_TTL_S)
    file_url = _file_url(request, settings, key)
    return JSONResponse({"upload_url": f"{file_url}?token={token}", "file_url": file_url})


@router.post("/storage/upload/initiate-multipart", openapi_extra=_json_request_body(InitiateUpload))
async def initiate_multipart_upload(
    request: Request,
    key_id: SubmitKeyDep,
    settings: SettingsDep,
    storage: StorageDep,
    secret: SecretDep,
) -> JSONResponse:
    """Start a JS-client multipart upload: parts go to `{upload_url}/{n}`, then `{upload_url}/complete`."""
    ttl_s = _upload_ttl_s(request)
    body = _json_body(await _read_body(request, MAX_JSON_BODY_BYTES, "Body"), InitiateUpload)
    key, upload = await _start_multipart(storage, secret, body.content_type, body.file_name)
    await _expire_upload(request, key, key_id, body.content_type, ttl_s)
    file_url = _file_url(request, settings, key)
    return JSONResponse({"upload_url": f"{file_url}/multipart/{upload}", "file_url": file_url})


@router.put("/files/{key}")
async def put_signed_upload(
    request: Request, key: str, settings: SettingsDep, storage: StorageDep, secret: SecretDep
) -> JSONResponse:
    """The signed single-shot PUT; an `Authorization` header (the Python client sends its key) is ignored."""
    subject = read_token(secret, _PUT, request.query_params.get("token", ""))
    meta: dict[str, Any] = json.loads(subject) if subject is not None else {}
    if meta.get("key") != key:
        return _error(403, "Upload URL signature is invalid or expired")
    content_type = request.headers.get("content-type") or meta["content_type"]
    async with _staged_body(request, settings) as (path, _digest):
        stored: StoredFile = await run_in_threadpool(storage.put_file, path, content_type, meta["file_name"], key=key)
    return JSONResponse(_described(stored, _file_url(request, settings, key)))


@router.put("/files/{key}/multipart/{upload}/{part_number}")
async def put_part(
    request: Request,
    key: str,
    upload: str,
    part_number: int,
    settings: SettingsDep,
    storage: StorageDep,
    secret: SecretDep,
) -> JSONResponse:
    """One part: the Python client reads the ETag header, the JS client the JSON body."""
    upload_id = _upload_id(secret, key, upload)
    data = await _read_body(request, min(settings.max_upload_bytes, MAX_PART_BYTES), what="Part")
    try:
        etag: str = await run_in_threadpool(storage.put_part, key, upload_id, part_number, data)
    except KeyError:
        return _error(404, "Unknown or expired multipart upload")
    except ValueError as exc:
        return _error(400, str(exc))
    return JSONResponse({"partNumber": part_number, "etag": etag}, headers={"ETag": etag})


@router.post("/files/{key}/multipart/{upload}/complete", openapi_extra=_json_request_body(CompleteUpload))
async def complete_multipart_upload(
    request: Request,
    key: str,
    upload: str,
    settings: SettingsDep,
    storage: StorageDep,
    secret: SecretDep,
) -> JSONResponse:
    """Join the parts; the file is then served at its URL."""
    upload_id = _upload_id(secret, key, upload)
    body = _json_body(await _read_body(request, MAX_JSON_BODY_BYTES, "Body"), CompleteUpload)
    parts = [(part.part_number, part.etag) for part in body.parts]
    try:
        stored: StoredFile = await run_in_threadpool(storage.complete_multipart, key, upload_id, parts)
    except KeyError:
        return _error(404, "Unknown or expired multipart upload")
    except ValueError as exc:
        return _error(400, str(exc))
    if stored.size > settings.max_upload_bytes:
        await run_in_threadpool(storage.delete, key)
        return _error(413, f"File is larger than the {settings.max_upload_bytes} byte limit")
    return JSONResponse(_described(stored, _file_url(request, settings, key)))


@router.get(
    "/files/{key}",
    response_class=Response,
    responses={
        200: {"description": "The file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        206: {"description": "The requested byte range", "content": {"*/*": {"schema": {"type": "string"}}}},
        307: {"description": "Redirect to the file in the bucket (--s3-presign)"},
        404: {"description": "No such file (expired or never uploaded)"},
        410: {"description": "The file's lifecycle expired it (X-Fal-Object-Lifecycle-Preference)"},
        416: {"description": "The Range lies outside the file"},
    },
)
async def get_file(request: Request, key: str, storage: StorageDep) -> Response:
    """A stored file, with the content type it was uploaded with; single byte ranges (`Range`) are honoured."""
    if not is_valid_key(key):
        return _error(404, "File not found")
    store = state_of(request).store
    expires_at = await read(store, store.file_expiry, key)
    if expires_at is not None and expires_at <= time.time():
        # Gone until the sweep deletes it, then 404 (fal's CDN answers either).
        return _error(410, "File expired")
    # S3 with --s3-presign: the bytes come from the bucket; the URL handed out stays this stable one.
    direct = storage.public_url(key)
    if direct is not None:
        if not await run_in_threadpool(storage.exists, key):
            return _error(404, "File not found")
        return RedirectResponse(direct, status_code=307, headers={"Cache-Control": "no-store"})
    try:
        stored: StoredFile = await run_in_threadpool(storage.stat, key)
    except KeyError:
        return _error(404, "File not found")
    headers = {"Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes", **_SANDBOX, **_NOSNIFF}
    if stored.file_name:
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{urllib.parse.quote(stored.file_name)}"
    byte_range = _byte_range(request.headers.get("range"), stored.size)
    if byte_range is None:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{stored.size}"})
    start, end = byte_range
    status = 200
    if (start, end) != (0, stored.size):
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=stored.content_type)
    try:
        chunks = await run_in_threadpool(storage.iter_bytes, key, start, end)
    except KeyError:
        return _error(404, "File not found")
    # A sync iterator: Starlette reads each chunk in its thread pool, so a 1 GiB file is never in memory whole.
    return StreamingResponse(chunks, status_code=status, headers=headers, media_type=stored.content_type)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, end)` (end exclusive) to send; the whole file without a usable single range; None: 416.

    Several ranges, or a header that is not `bytes=...`, are answered with the whole file (RFC 9110 allows it).
    """
    whole = (0, size)
    if not header or not header.startswith("bytes=") or "," in header:
        return whole
    first, dash, last = header[len("bytes=") :].strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return whole
    if last and not last.isdigit():
        return whole
    if not first:  # the last N bytes
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix > 0 and size > 0 else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return start, end


async def _start_multipart(
    storage: Storage, secret: bytes, content_type: str, file_name: str | None
) -> tuple[str, str]:
    key = new_key(content_type)
    upload_id: str = await run_in_threadpool(storage.create_multipart, key, content_type, file_name)
    return key, make_token(secret, _MULTIPART, f"{key}/{upload_id}", ttl_s=MULTIPART_TTL_S)


def _upload_id(secret: bytes, key: str, upload: str) -> str:
    """The storage upload id inside a multipart token, if the token is valid for `key`."""
    subject = read_token(secret, _MULTIPART, upload)
    token_key, _, upload_id = (subject or "").partition("/")
    if subject is None or token_key != key:
        raise HTTPException(status_code=404, detail="Unknown or expired multipart upload")
    return upload_id


async def _read_body(request: Request, limit: int, what: str = "File") -> bytes:
    """A multipart part's body (at most MAX_PART_BYTES), refused with 413 as soon as it is known to exceed `limit`."""
    too_large = HTTPException(status_code=413, detail=f"{what} is larger than the {limit} byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@contextlib.asynccontextmanager
async def _staged_body(request: Request, settings: Settings) -> AsyncIterator[tuple[Path, Any]]:
    """The request body written to a file in the data directory as it arrives, with its sha256.

    At most `STAGE_CHUNK_BYTES` are held in memory; a body past `--max-upload-bytes` is a 413 and leaves nothing
    behind. The file is the caller's to hand to the storage (which consumes it); whatever is left is removed.
    """
    limit = settings.max_upload_bytes
    too_large = HTTPException(status_code=413, detail=f"File is larger than the {limit} byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    folder = settings.data_dir / _STAGING
    folder.mkdir(exist_ok=True)
    path = folder / f"{secrets.token_hex(16)}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("wb") as out:

            def write(data: bytes) -> None:
                digest.update(data)  # hashlib and file writes release the GIL: the event loop keeps running
                out.write(data)

            pending: list[bytes] = []
            pending_bytes = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= STAGE_CHUNK_BYTES:
                    await run_in_threadpool(write, b"".join(pending))
                    pending, pending_bytes = [], 0
            if pending:
                await run_in_threadpool(write, b"".join(pending))
        yield path, digest
    finally:
        path.unlink(missing_ok=True)


def _file_url(request: Request, settings: Settings, key: str) -> str:
    return f"{base_url(request, settings)}/files/{key}"


def _described(stored: StoredFile, url: str) -> dict[str, Any]:
    return {
        "access_url": url,
        "file_url": url,
        "content_type": stored.content_type,
        "file_name": stored.file_name,
        "file_size": stored.size,
    }


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# HEAD shares the handler (it answers HEAD without reading the file); one OpenAPI operation is enough.
router.add_api_route("/files/{key}", get_file, methods=["HEAD"], include_in_schema=False)
