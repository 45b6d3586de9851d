"""The per-key token bucket: bursts up to the per-minute rate, then a Retry-After that matches the refill."""

from __future__ import annotations

from pathlib import Path

import pytest

from reimagine.limits import RateLimiter
from tests.webhooks.conftest import settings_for


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_bursts_then_limits_then_refills(tmp_path: Path) -> None:
    clock = _Clock()
    limiter = RateLimiter(settings_for(tmp_path, submit_rate_per_min=3), clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    wait = limiter.check("a")
    assert wait == pytest.approx(20.0)
    assert limiter.check("b") is None  # keys are independent
    clock.now += 10
    assert limiter.check("a") == pytest.approx(10.0)  # a refused check costs nothing
    clock.now += 10
    assert limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(20.0)
    clock.now += 3600
    assert [limiter.check("a") for _ in range(4)][:3] == [None, None, None]  # the bucket never exceeds one minute


def test_rate_limiter_zero_disables(tmp_path: Path) -> None:
    limiter = RateLimiter(settings_for(tmp_path, submit_rate_per_min=0))
    assert all(limiter.check("a") is None for _ in range(10_000))
