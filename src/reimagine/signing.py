"""HMAC tokens for upload URLs and CDN upload tokens, keyed by a per-installation secret.

A token is `<base64url(subject)>.<expires unix s>.<hex HMAC-SHA256>`; the HMAC covers a purpose string too, so a token
issued for one use (say a CDN token) is never accepted for another (a signed PUT).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time

from reimagine.config import Settings

SECRET_FILE = "secret.key"


def load_secret(settings: Settings) -> bytes:
    """The server secret in `data_dir/secret.key`, created (mode 0600) on first use.

    The API and worker processes may start at the same moment: the secret is written to a private temporary file
    and linked into place, so a reader never sees a half-written file and exactly one writer wins.
    """
    path = settings.data_dir / SECRET_FILE
    if path.exists():
        return path.read_bytes()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def make_token(secret: bytes, purpose: str, subject: str, *, ttl_s: float, now: float | None = None) -> str:
    """A token carrying `subject`, valid for `purpose` until `ttl_s` seconds from `now`."""
    expires = int((time.time() if now is None else now) + ttl_s)
    encoded = base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=")
    return f"{encoded}.{expires}.{_mac(secret, purpose, encoded, expires)}"


def read_token(secret: bytes, purpose: str, token: str, *, now: float | None = None) -> str | None:
    """The subject of a valid, unexpired token for `purpose`; None for anything else."""
    encoded, _, rest = token.partition(".")
    expires_text, _, mac = rest.partition(".")
    if not expires_text.isdigit() or not mac:
        return None
    expires = int(expires_text)
    if not hmac.compare_digest(mac, _mac(secret, purpose, encoded, expires)):
        return None
    if expires < (time.time() if now is None else now):
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def token_expiry(token: str) -> int:
    """The expiry (unix seconds) written in a token made by `make_token`."""
    return int(token.split(".")[1])


def _mac(secret: bytes, purpose: str, encoded_subject: str, expires: int) -> str:
    message = f"{purpose}\n{encoded_subject}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
