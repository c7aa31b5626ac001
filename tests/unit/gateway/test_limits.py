from __future__ import annotations

import pytest

from pipeline.gateway.limits import InFlight, RateLimits, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_paces_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.1)
    clock.now = 0.1
    assert bucket.take() == 0


def test_a_cost_larger_than_the_tokens_left_says_how_long_to_wait():
    bucket = TokenBucket(rate=100, burst=100, clock=Clock())
    assert bucket.take(60) == 0
    assert bucket.take(60) == pytest.approx(0.2)


def test_rate_limits_are_per_key_and_off_at_zero():
    limits = RateLimits(rate=1, burst=1)
    assert limits.retry_after("a") == 0
    assert limits.retry_after("a") > 0
    assert limits.retry_after("b") == 0
    assert RateLimits(rate=0, burst=0).retry_after("a") == 0


def test_in_flight_is_bounded():
    bound = InFlight(3)
    assert bound.try_acquire(2)
    assert not bound.try_acquire(2)
    bound.release(2)
    assert bound.try_acquire(3)
