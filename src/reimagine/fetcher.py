"""The one way reimagine reaches a URL it was given: image inputs now, webhook targets through `check_url`.

SSRF policy (serving-anchors.md §5 item 11): http(s) only; the host is resolved once and every address must be
public (or admitted by `settings.allow_hosts`); the connection goes to exactly those addresses, never to a second
DNS answer (no rebinding between check and connect); redirects are followed by hand and each hop is checked again;
the body is capped in bytes and the whole fetch in time.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from reimagine.config import Settings
from reimagine.errors import FetchRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 5
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str
    url: str


def is_public_address(address: IPAddress) -> bool:
    """False for loopback, private, link-local, site-local, CGNAT, multicast, reserved and unspecified addresses.

    IPv6 forms that embed an IPv4 address (mapped `::ffff:a.b.c.d`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96`,
    Teredo) are judged by the IPv4 address they lead to.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if not all(is_public_address(inner) for inner in embedded):
            return False
        if address.ipv4_mapped is not None:
            return True  # `::ffff:0:0/96` itself counts as private; the mapped address decides
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address in _CGNAT
        # Deprecated IPv6 site-local (fec0::/10): Python counts it as global, routers inside a site may not.
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        or not address.is_global
    )


def is_allowed_address(address: IPAddress, settings: Settings) -> bool:
    """Public, or inside an IP/CIDR entry of `settings.allow_hosts`."""
    return is_public_address(address) or any(address in network for network in _allowed_networks(settings))


def check_url(url: str, settings: Settings, field: str = "url") -> list[IPAddress]:
    """Validate `url` against the policy and return the addresses a connection may use.

    Raises:
        FetchRefused: naming `field`, when the URL is malformed, not http(s), unresolvable or private.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchRefused(field, f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchRefused(field, f"only http and https URLs can be fetched, got {parsed.scheme or 'no'} scheme")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as DNS and httpcore see it
    if not host:
        raise FetchRefused(field, "URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(field, f"cannot resolve host {host!r}: {exc}") from None
    addresses = _unique(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    if host.rstrip(".") in _allowed_names(settings):
        return addresses
    refused = [address for address in addresses if not is_allowed_address(address, settings)]
    if refused:
        # One private answer refuses the host: a mixed answer is how DNS rebinding sneaks in.
        raise FetchRefused(
            field,
            f"host {host!r} resolves to a private or reserved address ({refused[0]}); "
            "add it to --allow-hosts to admit it",
        )
    return addresses


def fetch(url: str, settings: Settings, field: str) -> Fetched:
    """GET `url` under the SSRF policy, the size cap `settings.fetch_max_bytes` and `settings.fetch_timeout_s`.

    Raises:
        FetchRefused: naming `field`, with a reason a user can act on.
    """
    deadline = time.monotonic() + settings.fetch_timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        addresses = check_url(url, settings, field)
        transport = _PinnedTransport(pinned_host(url), addresses)
        # trust_env=False: an HTTP(S)_PROXY from the environment would connect somewhere other than the pinned address.
        with httpx.Client(transport=transport, trust_env=False, follow_redirects=False) as client:
            try:
                with client.stream("GET", url, timeout=_remaining(deadline, field, url)) as response:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise FetchRefused(field, f"fetching {url} failed with HTTP {response.status_code}")
                    data = _read_capped(response, settings, field, deadline)
                    return Fetched(data, response.headers.get("content-type", ""), url)
            except httpx.TimeoutException:
                raise FetchRefused(field, f"fetching {url} took longer than {settings.fetch_timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise FetchRefused(field, f"fetching {url} failed: {exc}") from None
    raise FetchRefused(field, f"more than {MAX_REDIRECTS} redirects")


def _read_capped(response: httpx.Response, settings: Settings, field: str, deadline: float) -> bytes:
    limit = settings.fetch_max_bytes
    too_large = f"file is larger than the {limit} byte limit"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FetchRefused(field, too_large)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise FetchRefused(field, too_large)
        # The per-read timeout alone lets a server drip bytes forever; the deadline bounds the whole body.
        if time.monotonic() > deadline:
            raise FetchRefused(field, f"fetching took longer than {settings.fetch_timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _remaining(deadline: float, field: str, url: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchRefused(field, f"fetching {url} ran out of time")
    return remaining


def pinned_host(url: str) -> str:
    """The host of `url` as `check_url` resolved it and httpcore will ask to connect to (IDNA, no brackets)."""
    return httpx.URL(url).raw_host.decode("ascii")


def _pinned_targets(host: str, checked_host: str, addresses: list[IPAddress]) -> list[str]:
    """The addresses a connection to `host` may use: the checked ones, and only for the checked host."""
    if host.strip("[]") != checked_host or not addresses:
        raise httpcore.ConnectError(f"connection to {host} was not checked")
    return [str(address) for address in addresses]


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked addresses of one host instead of resolving its name again.

    TLS still uses the URL's host name for SNI and certificate checks (httpcore passes it to `start_tls`).
    """

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self._host = host
        self._addresses = list(addresses)
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in _pinned_targets(host, self._host, self._addresses):
            try:
                return self._backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class AsyncPinnedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of `_PinnedBackend`: connects to the checked addresses of one host, never to a new DNS answer.

    Connecting to an IP literal makes the inner backend's own resolution a no-op; TLS (`start_tls` on the stream)
    still gets the URL's host name for SNI and certificate verification.
    """

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self._host = host
        self._addresses = list(addresses)
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in _pinned_targets(host, self._host, self._addresses):
            try:
                return await self._backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable under the fetch policy")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        super().__init__(trust_env=False)
        # httpx has no public hook for the network backend; its pool is an httpcore.ConnectionPool that takes one.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(),
            network_backend=_PinnedBackend(host, addresses),
        )


class AsyncPinnedTransport(httpx.AsyncHTTPTransport):
    """An async transport that reaches only `addresses` (the `check_url` answer for `host`), verifying TLS."""

    def __init__(self, host: str, addresses: list[IPAddress], ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            network_backend=AsyncPinnedBackend(host, addresses),
        )


def pinned_async_client(
    url: str, addresses: list[IPAddress], ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for `url` that connects only to its checked `addresses`.

    It follows no redirects (a redirect could point past the check) and ignores proxy variables (a proxy would
    connect somewhere other than the pinned address).
    """
    transport = AsyncPinnedTransport(pinned_host(url), addresses, ssl_context)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)


def _allowed_networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in settings.allow_hosts:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            continue  # a host name, see _allowed_names
    return networks


def _allowed_names(settings: Settings) -> set[str]:
    return {_idna(entry.lower().rstrip(".")) for entry in settings.allow_hosts if not _is_network(entry)}


def _idna(name: str) -> str:
    """Host names compare in their DNS (IDNA) form, the form `check_url` resolves."""
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return False
    return True


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))
