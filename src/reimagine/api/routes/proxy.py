"""`/api/fal/proxy`: the JS client's proxy mode (`proxyUrl: {url, when: "always"}`), served by reimagine itself.

In proxy mode `@fal-ai/client` sends every API call (run, queue, stream, storage initiate, tokens) to one URL with
its original method and body plus `x-fal-target-url: https://<fal host>/<path>` (fal-protocol.md §11.2). We map
the fal host to our own route prefix and hand the unchanged request to this same app, in process: the ASGI scope
gets the new path and query, everything else (method, body, Authorization, `x-fal-*`, the original Host and
scheme) stays, so URLs built into answers point at this server and server-sent events stream through as they are
produced. Storage PUTs go straight to the returned `upload_url`, never through here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

router = APIRouter(redirect_slashes=False)

PROXY_PATH = "/api/fal/proxy"
TARGET_URL_HEADER = "x-fal-target-url"

#: fal host -> (our prefix, allowed path prefixes). `rest.alpha.fal.ai` is the REST host of JS <= 1.9.2.
_UPSTREAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "queue.fal.run": ("", ("/",)),
    "fal.run": ("/run", ("/",)),
    "rest.fal.ai": ("", ("/storage/", "/tokens")),
    "rest.alpha.fal.ai": ("", ("/storage/", "/tokens")),
}

#: Scope keys a fresh HTTP request carries; routing state of the proxy route itself must not leak into the replay.
_SCOPE_KEYS = ("type", "asgi", "http_version", "scheme", "server", "client", "root_path", "state", "extensions")
#: Not replayed: the target (no loops), and Origin (CORS is answered once, by the outer request).
_DROPPED_HEADERS = {TARGET_URL_HEADER.encode(), b"origin"}


def _invalid(reason: str) -> JSONResponse:
    return JSONResponse({"detail": "Invalid request", "message": reason}, status_code=400)


def target_path(target_url: str) -> tuple[str, str] | None:
    """(our raw path, raw query) for a fal target URL, or None when it is not a fal URL we serve."""
    try:
        parts = urlsplit(target_url)
        port = parts.port
    except ValueError:  # an unclosed IPv6 bracket, or a port that is not a number in range
        return None
    upstream = _UPSTREAMS.get((parts.hostname or "").lower())
    if parts.scheme != "https" or upstream is None or port not in (None, 443):
        return None
    prefix, allowed = upstream
    path = parts.path or "/"
    if not path.startswith(allowed) or path.startswith(PROXY_PATH):
        return None
    return prefix + path, parts.query


class _Replay(Response):
    """Runs the app on the rewritten scope with the original receive/send: the body and the answer stream through."""

    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__()
        self._replay_scope = scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"](self._replay_scope, receive, send)


async def proxy(request: Request) -> Response:
    """Dispatch on `x-fal-target-url`: queue.fal.run, fal.run (run host) and rest.fal.ai (storage, tokens)."""
    target = request.headers.get(TARGET_URL_HEADER)
    if not target:
        return _invalid(f"missing {TARGET_URL_HEADER} header")
    mapped = target_path(target)
    if mapped is None:
        return _invalid(f"{TARGET_URL_HEADER} is not a fal queue, run or storage URL: {target}")
    raw_path, query = mapped
    scope = {key: request.scope[key] for key in _SCOPE_KEYS if key in request.scope}
    root_path = request.scope.get("root_path", "")
    scope.update(
        method=request.method,
        path=root_path + unquote(raw_path),
        raw_path=(root_path + raw_path).encode(),
        query_string=query.encode(),
        headers=[(name, value) for name, value in request.scope["headers"] if name not in _DROPPED_HEADERS],
    )
    return _Replay(scope)


# One OpenAPI operation per method: a shared operation id would be ambiguous for generated clients.
for _method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
    router.add_api_route(
        PROXY_PATH,
        proxy,
        methods=[_method],
        operation_id=f"proxy_{_method.lower()}",
        summary="fal client proxy: forwards to the route that `x-fal-target-url` names",
    )
