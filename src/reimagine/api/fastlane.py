"""The three hottest routes, dispatched before FastAPI's router: submit, status poll, sync run.

With a no-op model, FastAPI's exception and exit-stack layers, its route matching (every route of every included
router is tried in turn) and its per-endpoint wrappers cost as much CPU as the handlers themselves, and these three
routes carry nearly all of a busy server's requests. This middleware sits where FastAPI puts user middleware (inside
its error handling and any CORS layer) and calls the same handlers with the same `Request`; the routes stay
registered with FastAPI too, which serves their variants (trailing slashes, the `/3.2/requests/...` form) and
documents them in OpenAPI. The answers are identical either way; the tests run both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from reimagine.api.routes.queue import get_status, submit_request
from reimagine.api.routes.run import run_sync
from reimagine.api.wire import QUEUE_PREFIX

_STATUS_PREFIX = f"/{QUEUE_PREFIX}/requests/"
_STATUS_SUFFIX = "/status"
_EXACT: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
    ("POST", f"/{QUEUE_PREFIX}/3.2"): submit_request,
    ("POST", f"/run/{QUEUE_PREFIX}/3.2"): run_sync,
}


class FastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        handler = _EXACT.get((method, path))
        if handler is not None:
            response = await _answer(handler, Request(scope, receive, send))
        elif method == "GET" and path.startswith(_STATUS_PREFIX) and path.endswith(_STATUS_SUFFIX):
            request_id = path[len(_STATUS_PREFIX) : -len(_STATUS_SUFFIX)]
            if not request_id or "/" in request_id:
                await self.app(scope, receive, send)
                return
            response = await _answer(lambda request: get_status(request, request_id), Request(scope, receive, send))
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


async def _answer(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
    """The handler's response, with the two exceptions FastAPI's layers would turn into answers turned the same way."""
    try:
        return await handler(request)
    except HTTPException as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    except ClientDisconnect:
        # As app.py's handler: nobody reads this answer, and it is not a server error.
        return Response(status_code=400)
