"""What the OpenAPI document adds to FastAPI's: the auth schemes, every status code a route answers, the event
streams and files as what they are, and the URL patterns the server enforces.

FastAPI documents what it can see (a route's body model, its 200 and its parameter 422s); most of our routes
answer with hand-built responses, so the rest is declared here, in one table, next to nothing else. A route that
is not in the table keeps FastAPI's description; `tests/adversarial/test_openapi.py` runs schemathesis against
a live server to find where the two disagree.
"""

from __future__ import annotations

import copy
from typing import Any

from reimagine.api.wire import QUEUE_PREFIX
from reimagine.jobs import JobStatus

_ERROR = {"$ref": "#/components/schemas/ErrorDetail"}
_JSON_ERROR = {"content": {"application/json": {"schema": _ERROR}}}
#: Server-sent events: each one a JSON status (or result) in `data`, with an `id` on the resumable streams.
_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
}
_EVENTS = {"content": {"text/event-stream": {"schema": _EVENT}}}
_BINARY = {"type": "string", "format": "binary"}
_KEY_AUTH: list[dict[str, list[str]]] = [{"falKey": []}]
_UPLOAD_TOKEN: list[dict[str, list[str]]] = [{"uploadToken": []}]
_PUBLIC: list[dict[str, list[str]]] = []

#: File keys: sha256 or random hex, plus an extension (`storage.is_valid_key`); anything else is a 404.
FILE_KEY_PATTERN = r"^[0-9a-f]{32,64}(\.[a-z0-9]{1,16})?$"


def _errors(**codes: str) -> dict[str, Any]:
    """`{"401": {...}, ...}` from `_401="why"` keyword arguments."""
    return {code.lstrip("_"): {"description": why, **_JSON_ERROR} for code, why in codes.items()}


_AUTH = _errors(_401="Missing or unknown `Authorization: Key ...`")
_ADMISSION = {
    **_AUTH,
    **_errors(
        _400="The body ended before its Content-Length",
        _413="Body over --max-request-bytes: upload images through the storage API and pass their URLs",
        _422="Invalid input: `detail[].loc` names the field",
        _429="Submit rate or queue depth exceeded; see Retry-After",
    ),
}
_REPLAYED = {
    "default": {
        "description": "The model's answer replayed with its status: 422 for an unusable image, 499 cancelled, "
        "500 internal error, 503 out of memory, 504 start deadline passed (X-Fal-Error-Type names it)",
        **_JSON_ERROR,
    }
}
_UNKNOWN_REQUEST = _errors(_404="No such request for this key")
_UPLOAD_SIGNED = _errors(_400="Bad part number or etag", _404="Unknown or expired upload")

# (method, path): (security, responses added or replaced, other operation fields)
_OPERATIONS: dict[tuple[str, str], tuple[list[dict[str, list[str]]], dict[str, Any], dict[str, Any]]] = {
    ("post", f"/{QUEUE_PREFIX}/3.2"): (_KEY_AUTH, _ADMISSION, {}),
    ("post", f"/run/{QUEUE_PREFIX}/3.2"): (_KEY_AUTH, {**_ADMISSION, **_REPLAYED}, {}),
    ("post", f"/run/{QUEUE_PREFIX}/3.2/stream"): (
        _KEY_AUTH,
        {**_ADMISSION, "200": {"description": "Events", **_EVENTS}},
        {},
    ),
    ("get", f"/{QUEUE_PREFIX}/requests/{{request_id}}/status"): (_KEY_AUTH, {**_AUTH, **_UNKNOWN_REQUEST}, {}),
    ("get", f"/{QUEUE_PREFIX}/requests/{{request_id}}/status/stream"): (
        _KEY_AUTH,
        {**_AUTH, **_UNKNOWN_REQUEST, "200": {"description": "Status events until COMPLETED", **_EVENTS}},
        {},
    ),
    ("get", f"/{QUEUE_PREFIX}/requests/{{request_id}}"): (
        _KEY_AUTH,
        {**_AUTH, **_UNKNOWN_REQUEST, **_errors(_400="Still in progress"), **_REPLAYED},
        {},
    ),
    ("put", f"/{QUEUE_PREFIX}/requests/{{request_id}}/cancel"): (
        _KEY_AUTH,
        {
            **_AUTH,
            "202": {"description": "CANCELLATION_REQUESTED", "content": {"application/json": {}}},
            "400": {"description": "ALREADY_COMPLETED", "content": {"application/json": {}}},
            "404": {"description": "NOT_FOUND", "content": {"application/json": {}}},
        },
        {},
    ),
    ("get", f"/{QUEUE_PREFIX}/requests"): (
        _KEY_AUTH,
        {**_AUTH, **_errors(_422="Bad `status`, `limit` or `cursor`")},
        {
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", *JobStatus]},
                    "description": "fal's statuses, or one of our states",
                },
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {
                    "name": "cursor",
                    "in": "query",
                    "schema": {"type": "string", "pattern": "^[0-9]*$"},
                    "description": "`next_cursor` of the previous page",
                },
            ]
        },
    ),
    ("delete", f"/{QUEUE_PREFIX}/requests/{{request_id}}"): (
        _KEY_AUTH,
        {**_AUTH, **_UNKNOWN_REQUEST, **_errors(_400="Not finished yet: cancel it first")},
        {},
    ),
    ("post", "/storage/auth/token"): (_KEY_AUTH, _AUTH, {}),
    ("post", "/storage/upload/initiate"): (
        _KEY_AUTH,
        {**_AUTH, **_errors(_413="Body too large", _422="Invalid body")},
        {},
    ),
    ("post", "/storage/upload/initiate-multipart"): (
        _KEY_AUTH,
        {**_AUTH, **_errors(_413="Body too large", _422="Invalid body")},
        {},
    ),
    ("post", "/files/upload"): (
        _UPLOAD_TOKEN,
        {**_errors(_401="Missing, invalid or expired upload token", _413="Over --max-upload-bytes")},
        {"requestBody": {"required": True, "content": {"*/*": {"schema": _BINARY}}}},
    ),
    ("post", "/files/upload/multipart"): (_UPLOAD_TOKEN, _errors(_401="Missing, invalid or expired upload token"), {}),
    ("put", "/files/{key}"): (
        _PUBLIC,
        _errors(_403="Upload URL signature is invalid or expired", _413="Over --max-upload-bytes"),
        {"requestBody": {"required": True, "content": {"*/*": {"schema": _BINARY}}}},
    ),
    ("get", "/files/{key}"): (_PUBLIC, {}, {}),
    ("put", "/files/{key}/multipart/{upload}/{part_number}"): (
        _PUBLIC,
        {**_UPLOAD_SIGNED, **_errors(_413="Part over 100 MiB")},
        {"requestBody": {"required": True, "content": {"*/*": {"schema": _BINARY}}}},
    ),
    ("post", "/files/{key}/multipart/{upload}/complete"): (
        _PUBLIC,
        {
            **_UPLOAD_SIGNED,
            **_errors(_413="Body too large, or the joined file over --max-upload-bytes", _422="Invalid body"),
        },
        {},
    ),
    ("get", "/health/live"): (_PUBLIC, {}, {}),
    ("get", "/health/ready"): (
        _PUBLIC,
        {"503": {"description": "Not ready yet", "content": {"application/json": {}}}},
        {},
    ),
    ("get", "/.well-known/jwks.json"): (_PUBLIC, {}, {}),
    ("get", "/bria/reimagine/capabilities"): (_PUBLIC, {}, {}),
}

#: What `routes.proxy.target_path` maps: the queue and run hosts, and the REST host's storage and token routes.
_PROXY_TARGET_PATTERN = r"^https://((queue\.)?fal\.run(:443)?(/|$)|rest(\.alpha)?\.fal\.ai(:443)?/(storage/|tokens))"
#: The JS client's proxy: any method, forwarded in process to the route that `x-fal-target-url` names.
_PROXY = (
    _PUBLIC,  # the target route checks the key
    {
        "400": {"description": "Missing or foreign x-fal-target-url", **_JSON_ERROR},
        "default": {"description": "The target route's answer, as that route documents it", "content": {"*/*": {}}},
    },
    {
        "parameters": [
            {
                "name": "x-fal-target-url",
                "in": "header",
                "required": True,
                "description": "The fal URL the client meant (queue.fal.run, fal.run or rest.fal.ai)",
                "schema": {"type": "string", "pattern": _PROXY_TARGET_PATTERN},
            }
        ]
    },
)
for _method in ("get", "post", "put", "delete", "patch"):
    _OPERATIONS[(_method, "/api/fal/proxy")] = _PROXY

_SECURITY_SCHEMES = {
    "falKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Key <key id>:<secret>`, fal's scheme (`reimagine keys create`).",
    },
    "uploadToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "A short-lived token from `POST /storage/auth/token`.",
    },
}


def describe(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (FastAPI's document) with the auth schemes, status codes, media types and patterns added."""
    schema = copy.deepcopy(schema)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)
    components.setdefault("schemas", {})["ErrorDetail"] = {
        "type": "object",
        "properties": {"detail": {"description": "A message, or fal's list of `{loc, msg, type}`"}},
        "required": ["detail"],
    }
    schema["security"] = _KEY_AUTH
    for (method, path), (security, responses, extra) in _OPERATIONS.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue  # a route some builds do not have
        operation["security"] = security
        if "default" in responses and path == "/api/fal/proxy":
            operation["responses"].pop("200", None)  # not FastAPI's JSON: whatever the target answers
        operation.setdefault("responses", {}).update(copy.deepcopy(responses))
        operation.update(copy.deepcopy(extra))
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] == "key" and path.startswith("/files/{key}"):
                    parameter["schema"] = {"type": "string", "pattern": FILE_KEY_PATTERN}
    return schema
