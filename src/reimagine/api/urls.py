"""Absolute URLs the API hands out: configured public base URL, else the request's own scheme and Host."""

from __future__ import annotations

import functools
import ipaddress

from starlette.requests import Request

from reimagine.config import Settings


def base_url(request: Request, settings: Settings) -> str:
    """Base URL without a trailing slash; honours X-Forwarded-Proto/Host/Prefix from a trusted proxy only.

    From anyone else those headers are ignored: a client could otherwise make the links handed out (and the
    file URLs stored in results) point at a host of its choosing.
    """
    # From the scope and headers: `request.url` would build and parse the whole URL on every submit.
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    proto = request.scope.get("scheme", "http")
    host = request.headers.get("host", "")
    prefix = ""
    if settings.trusted_proxies and _is_trusted(request, tuple(settings.trusted_proxies)):
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip() or proto
        host = request.headers.get("x-forwarded-host", "").split(",")[0].strip() or host
        prefix = request.headers.get("x-forwarded-prefix", "").rstrip("/")
    if not host:
        host = f"{request.url.hostname}:{request.url.port}" if request.url.port else str(request.url.hostname)
    return f"{proto}://{host}{prefix}"


def _is_trusted(request: Request, proxies: tuple[str, ...]) -> bool:
    """Whether the peer of this connection (not X-Forwarded-For: uvicorn's rewriting is off) is a trusted proxy."""
    client = request.scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in _networks(proxies))


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry.strip("[]"), strict=False) for entry in proxies]
