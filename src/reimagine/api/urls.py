"""Absolute URLs the API hands out: configured public base URL, else the request's own scheme and Host."""

from __future__ import annotations

from starlette.requests import Request

from reimagine.config import Settings


def base_url(request: Request, settings: Settings) -> str:
    """Base URL without a trailing slash; honours X-Forwarded-Proto/Host behind a proxy."""
    # From the scope and headers: `request.url` would build and parse the whole URL on every submit.
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip() or request.scope.get("scheme", "http")
    host = request.headers.get("x-forwarded-host", "").split(",")[0].strip() or request.headers.get("host", "")
    if not host:
        host = f"{request.url.hostname}:{request.url.port}" if request.url.port else str(request.url.hostname)
    prefix = request.headers.get("x-forwarded-prefix", "").rstrip("/")
    return f"{proto}://{host}{prefix}"
