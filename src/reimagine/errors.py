"""Exceptions raised by reimagine.

ReimagineError
├── ConfigError            bad settings; raised at start-up, never at request time
├── InputError             a request field is unusable (422 naming `field`)
│   └── FetchRefused       a URL refused by the fetcher's SSRF policy or limits
├── JobCancelled           the job was cancelled; raised inside `generate` between steps
├── OutOfMemory            the device ran out of memory (503, error_type "out_of_memory")
├── ModelMissing           weights are not available locally and may not be downloaded
└── StorageUnavailable     files cannot be stored (a missing bucket); 503 naming it, /health/ready not ready
"""

from __future__ import annotations


class ReimagineError(Exception):
    """Base class of every error reimagine raises on purpose."""


class ConfigError(ReimagineError):
    """A setting is invalid; the process refuses to start."""


class InputError(ReimagineError):
    """A request field cannot be used; surfaces as 422 `{"detail": [{"loc": ["body", field], ...}]}`."""

    def __init__(self, field: str, message: str, *, error_type: str = "value_error") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.error_type = error_type

    def detail(self) -> list[dict[str, object]]:
        return [{"loc": ["body", self.field], "msg": self.message, "type": self.error_type}]


class FetchRefused(InputError):
    """A remote URL was refused (private address, too large, too slow, not an image)."""


class JobCancelled(ReimagineError):
    """Raised by the cancel check at a denoising-step boundary."""


class OutOfMemory(ReimagineError):
    """The accelerator ran out of memory; never retried blindly."""


class ModelMissing(ReimagineError):
    """Model weights are neither cached nor downloadable; the message says what to fetch and where."""


class StorageUnavailable(ReimagineError):
    """The file store cannot be used (missing bucket, no access, endpoint down); the message names it."""
