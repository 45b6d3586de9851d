"""Signatures verify against the published JWKS, by our helper and by plain `cryptography`; the key persists."""

from __future__ import annotations

import base64
import hashlib
import stat
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from reimagine.webhooks import WebhookKey, next_attempt_delay, verify_signature
from tests.webhooks.conftest import settings_for

BODY = b'{"request_id":"r1","gateway_request_id":"r1","status":"OK","payload":{"image":{}}}'


def _headers(key: WebhookKey, timestamp: int, body: bytes = BODY) -> dict[str, str]:
    ts = str(timestamp)
    return {
        "X-Fal-Webhook-Request-Id": "r1",
        "X-Fal-Webhook-User-Id": "reimagine",
        "X-Fal-Webhook-Timestamp": ts,
        "X-Fal-Webhook-Signature": key.sign("r1", "reimagine", ts, body),
    }


def test_signature_round_trip_against_jwks(tmp_path: Path) -> None:
    key = WebhookKey.load_or_create(settings_for(tmp_path))
    jwks = key.jwks()
    now = int(time.time())
    headers = _headers(key, now)
    assert verify_signature(jwks, headers, BODY, now=now)
    assert verify_signature(jwks, {k.lower(): v for k, v in headers.items()}, BODY, now=now + 299)

    # Independently, as a receiver following fal's docs would: raw key from `x`, message of four lines.
    (jwk,) = jwks["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["kid"]) == ("OKP", "Ed25519", key.kid)
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    assert len(raw) == 32
    message = f"r1\nreimagine\n{now}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    signature = bytes.fromhex(headers["X-Fal-Webhook-Signature"])
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, message + b"x")


def test_signature_rejects_tampering_staleness_and_other_keys(tmp_path: Path) -> None:
    key = WebhookKey.load_or_create(settings_for(tmp_path))
    other = WebhookKey.load_or_create(settings_for(tmp_path / "other"))
    now = int(time.time())
    headers = _headers(key, now)
    assert not verify_signature(key.jwks(), headers, BODY.replace(b"OK", b"KO"), now=now)
    assert not verify_signature(key.jwks(), headers, BODY, now=now + 301)
    assert not verify_signature(other.jwks(), headers, BODY, now=now)
    assert verify_signature({"keys": other.jwks()["keys"] + key.jwks()["keys"]}, headers, BODY, now=now)
    assert not verify_signature(key.jwks(), {**headers, "X-Fal-Webhook-Signature": "zz"}, BODY, now=now)
    assert not verify_signature(key.jwks(), {**headers, "X-Fal-Webhook-Timestamp": "soon"}, BODY, now=now)
    assert not verify_signature(key.jwks(), {}, BODY, now=now)


def test_key_is_created_private_and_stable(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    first = WebhookKey.load_or_create(settings)
    path = settings.data_dir / "webhook_ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = WebhookKey.load_or_create(settings)
    assert again.kid == first.kid and again.jwks() == first.jwks()
    assert [p.name for p in settings.data_dir.iterdir()] == ["webhook_ed25519.pem"]  # no temporary left behind


def test_backoff_spreads_attempts_over_the_window(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, webhook_window_s=7200, webhook_max_attempts=11)
    delays = [next_attempt_delay(attempt, settings) for attempt in range(1, 11)]
    assert 5 < delays[0] < 9
    assert 0.75 * 7200 <= sum(delays) <= 1.25 * 7200
    assert all(later > earlier for earlier, later in zip(delays[2:], delays[4:], strict=False))
