"""Webhooks: the Ed25519 signing key, its JWKS, and the dispatcher that drains the store's outbox.

fal-protocol.md §9: a terminal job's payload is POSTed to `?fal_webhook=<url>`, signed over
`request_id\\nuser_id\\ntimestamp\\nhex(sha256(body))`, retried "10 times within 2 hours". The outbox row is written
in the same transaction that finishes the job, so a webhook is a side channel: nothing here can change a job's
outcome (style.md rule 9), and delivery is at-least-once (receivers dedupe on `request_id`).

Receivers written for fal hard-code fal's JWKS; they must fetch ours from `/.well-known/jwks.json` instead.
Replicas that share a database must share the key file too (same `data_dir`, or copy `webhook_ed25519.pem`),
since any replica may deliver any job's webhook and the JWKS publishes one key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reimagine.config import Settings
from reimagine.errors import InputError
from reimagine.fetcher import IPAddress, pinned_async_client
from reimagine.queue.models import WebhookDelivery
from reimagine.wakeup import Wakeup

__all__ = ["WebhookDispatcher", "WebhookKey", "next_attempt_delay", "verify_signature"]

logger = logging.getLogger(__name__)

KEY_FILE = "webhook_ed25519.pem"
#: Idle poll period of the dispatcher; `kick()` wakes it sooner when a job finishes.
POLL_S = 0.5
#: Deliveries in flight at once: one slow receiver (up to `webhook_timeout_s`) must not hold up the others.
MAX_IN_FLIGHT = 16


class WebhookKey:
    """The server's Ed25519 signing key, kept as PKCS#8 PEM in the data directory."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        #: Derived from the public key, so it is stable across restarts and equal on replicas sharing the file.
        self.kid = hashlib.sha256(self._public_raw).hexdigest()[:16]

    @classmethod
    def load_or_create(cls, settings: Settings) -> WebhookKey:
        """Load `<data_dir>/webhook_ed25519.pem`, creating it (mode 0600) on first use."""
        path = settings.data_dir / KEY_FILE
        if not path.exists():
            _create_key_file(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(key)

    def jwks(self) -> dict[str, Any]:
        """The public half as a JWKS document, the shape fal publishes."""
        x = base64.urlsafe_b64encode(self._public_raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def sign(self, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
        """Hex Ed25519 signature of fal's webhook message for these values."""
        return self._private.sign(_message(request_id, user_id, timestamp, body)).hex()


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Written under a unique name and linked into place: processes starting together (API, replicas) never read a
    # half-written file, and exactly one key wins (link fails if the name exists).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def verify_signature(
    jwks: Mapping[str, Any], headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float = 300
) -> bool:
    """Check a received webhook as a receiver would: fresh timestamp and a valid signature by any JWKS key.

    Args:
        jwks: the document served at `/.well-known/jwks.json` (cache it; it changes only with the key file).
        headers: the request's headers (any case).
        body: the raw request body, before any JSON parsing.
        now: the receiver's clock, unix seconds.
        tolerance_s: how far the `X-Fal-Webhook-Timestamp` may be from `now` (replay window).

    Returns:
        True when the message verifies; False otherwise (never raises on malformed input).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    request_id = lowered.get("x-fal-webhook-request-id")
    user_id = lowered.get("x-fal-webhook-user-id")
    timestamp = lowered.get("x-fal-webhook-timestamp")
    signature_hex = lowered.get("x-fal-webhook-signature")
    if request_id is None or user_id is None or timestamp is None or signature_hex is None:
        return False
    try:
        if abs(now - int(timestamp)) > tolerance_s:
            return False
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    message = _message(request_id, user_id, timestamp, body)
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            x = str(jwk["x"])
            public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
            public.verify(signature, message)
        except (InvalidSignature, KeyError, ValueError, binascii.Error):
            continue
        return True
    return False


def next_attempt_delay(attempt: int, settings: Settings) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 = the first delivery) before the next one.

    Doubling delays `base * 2**(attempt-1)` whose sum over the `webhook_max_attempts - 1` retries is
    `webhook_window_s` (defaults: 11 attempts, 7.0 s ... ~1 h, 2 h in all, like fal's "10 retries within 2 hours").
    ±25 % jitter keeps receivers that come back from an outage from being hit by every replica at once.
    """
    retries = max(1, settings.webhook_max_attempts - 1)
    base = settings.webhook_window_s / (2.0**retries - 1)
    return base * 2.0 ** (max(1, attempt) - 1) * random.uniform(0.75, 1.25)


class _Store(Protocol):
    def due_webhooks(self, now: float, limit: int = ..., lock_s: float = ...) -> list[WebhookDelivery]: ...

    def record_webhook_attempt(
        self, delivery_id: int, *, status: int | None, error: str | None, next_attempt_at: float | None
    ) -> None: ...


class _Counter(Protocol):
    def count_webhook(self, result: str) -> None: ...


def _resolves(url: str) -> bool:
    """Whether the URL's host has addresses (or is malformed: then the refusal is final anyway)."""
    try:
        parsed = httpx.URL(url)
        if parsed.host:
            socket.getaddrinfo(parsed.host, parsed.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    except (httpx.InvalidURL, OSError):
        pass
    return True


def _allow_all(url: str) -> None:
    """No SSRF policy: for tests and callers that checked the URL already."""


def _addresses(checked: object) -> list[IPAddress] | None:
    """The address list a policy returned, or None when it returned none (no policy: `_allow_all`)."""
    if checked is None:
        return None
    if not isinstance(checked, list) or not all(
        isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address) for a in checked
    ):
        # A policy that answers something else cannot be pinned to; refuse to guess rather than resolve again.
        raise TypeError(f"check_target returned {type(checked).__name__}, not a list of IP addresses")
    return checked


class WebhookDispatcher:
    """Delivers due outbox rows: sign, POST, record the attempt, schedule the retry or give up.

    Every replica may run one; `due_webhooks` locks the rows it hands out, so each attempt is made once. The lock
    outlives the attempt's timeout; if this process dies mid-attempt the row is retried after the lock expires.
    """

    def __init__(
        self,
        store: _Store,
        settings: Settings,
        key: WebhookKey,
        *,
        client: httpx.AsyncClient | None = None,
        check_target: Callable[[str], object] = _allow_all,
        metrics: _Counter | None = None,
    ) -> None:
        """Args:
        store: the job store (its outbox methods are called from a thread).
        settings: webhook_* settings and `webhook_user_id`.
        key: the signing key.
        client: the HTTP client, for tests. By default each attempt gets its own client that connects only to the
            addresses `check_target` returned (no second DNS lookup, so no rebinding between check and connect),
            follows no redirects (a redirect could point past the SSRF check) and ignores proxy variables.
        check_target: the SSRF policy; returns the addresses the URL may be reached at (`fetcher.check_url`) or
            raises `InputError` (e.g. `FetchRefused`) for a refused URL. When it returns no addresses (the
            `_allow_all` default: no policy), the default client resolves the host itself.
        metrics: counts outcomes (`Metrics.count_webhook`), if given.
        """
        self._store = store
        self._settings = settings
        self._key = key
        self._client = client
        self._ssl_context: ssl.SSLContext | None = None  # shared by the per-attempt clients; loads the CAs once
        self._check_target = check_target
        self._metrics = metrics
        self._wake = Wakeup()
        self._in_flight: set[asyncio.Task[None]] = set()

    def kick(self) -> None:
        """Look for due deliveries now (a job just finished). Safe to call from any thread."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; never raises otherwise (errors are logged and retried next round)."""
        wake = self._wake.attach()
        # A lock long enough that an attempt (bounded by the timeout) ends before another replica may take the row.
        lock_s = self._settings.webhook_timeout_s * 2 + 30
        try:
            while True:
                capacity = MAX_IN_FLIGHT - len(self._in_flight)
                if capacity > 0:
                    try:
                        due = await asyncio.to_thread(self._store.due_webhooks, time.time(), capacity, lock_s)
                    except Exception:
                        logger.warning("could not read the webhook outbox; retrying", exc_info=True)
                        due = []
                    for delivery in due:
                        task = asyncio.create_task(self._deliver_logged(delivery), name=f"webhook-{delivery.id}")
                        self._in_flight.add(task)
                        task.add_done_callback(self._in_flight.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_S)
                wake.clear()
        finally:
            self._wake.detach()
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _deliver_logged(self, delivery: WebhookDelivery) -> None:
        try:
            await self.deliver_once(delivery)
        except Exception:
            # E.g. the store is down while recording: the row's lock expires and the attempt is made again.
            logger.exception("webhook %s for job %s failed unexpectedly", delivery.id, delivery.job_id)

    async def deliver_once(self, delivery: WebhookDelivery) -> str:
        """Make one attempt and record it; returns the result: delivered, retry, refused (retried too) or gave_up."""
        try:
            checked = await asyncio.to_thread(self._check_target, delivery.url)
        except InputError as exc:
            if not await asyncio.to_thread(_resolves, delivery.url):
                # A DNS failure may be the receiver's outage, not the policy: retry it like a connect error.
                return await self._record(delivery, "retry", status=None, error=f"unresolvable: {exc}"[:500])
            # The URL passed the policy when the job was submitted: its host now resolves to a forbidden address
            # (a DNS change, or a rebinding attempt). Never contacted, and retried like any failed delivery: a
            # receiver whose DNS is briefly wrong must not lose its webhook.
            logger.warning("webhook for job %s refused by the SSRF policy: %s", delivery.job_id, exc)
            return await self._record(delivery, "refused", status=None, error=f"refused: {exc}"[:500])

        body = delivery.body.encode()
        timestamp = str(int(time.time()))
        user_id = self._settings.webhook_user_id
        headers = {
            "content-type": "application/json",
            "x-fal-webhook-request-id": delivery.job_id,
            "x-fal-webhook-user-id": user_id,
            "x-fal-webhook-timestamp": timestamp,
            "x-fal-webhook-signature": self._key.sign(delivery.job_id, user_id, timestamp, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = self._client
                if client is None:
                    client = await stack.enter_async_context(self._default_client(delivery.url, checked))
                response = await client.post(
                    delivery.url, content=body, headers=headers, timeout=self._settings.webhook_timeout_s
                )
                status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if status is not None and 200 <= status < 300:
            return await self._record(delivery, "delivered", status=status, error=None)
        logger.info("webhook for job %s attempt %d failed: %s", delivery.job_id, delivery.attempts + 1, error or status)
        return await self._record(delivery, "retry", status=status, error=error)

    def _default_client(self, url: str, checked: object) -> httpx.AsyncClient:
        """A one-attempt client pinned to the checked addresses (unpinned only when there was no policy)."""
        addresses = _addresses(checked)
        if addresses is None:
            return httpx.AsyncClient(follow_redirects=False, trust_env=False)
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return pinned_async_client(url, addresses, self._ssl_context)

    async def _record(self, delivery: WebhookDelivery, result: str, *, status: int | None, error: str | None) -> str:
        next_attempt_at: float | None = None
        if result in ("retry", "refused"):
            attempt = delivery.attempts + 1
            if attempt >= self._settings.webhook_max_attempts:
                result = "gave_up"
                logger.warning("webhook for job %s gave up after %d attempts", delivery.job_id, attempt)
            else:
                next_attempt_at = time.time() + next_attempt_delay(attempt, self._settings)
        await asyncio.to_thread(
            self._store.record_webhook_attempt,
            delivery.id,
            status=status,
            error=error,
            next_attempt_at=next_attempt_at,
        )
        if self._metrics is not None:
            self._metrics.count_webhook(result)
        return result
