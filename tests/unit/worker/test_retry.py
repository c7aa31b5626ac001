from __future__ import annotations

import itertools

import pytest

from pipeline.errors import InferenceUnavailable, InvalidRequest
from pipeline.worker.retry import Backoff, RetriesExhausted, retrying


def test_delays_grow_exponentially_up_to_the_cap():
    delays = list(itertools.islice(Backoff(0.1, 0.5, 10).delays(), 5))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_a_transient_failure_is_retried_until_it_succeeds():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise InferenceUnavailable("down")
        return "ok"

    value, attempts = await retrying(flaky, Backoff(0.001, 0.002, 5))
    assert (value, attempts) == ("ok", 3)


async def test_retries_stop_when_the_budget_is_spent():
    async def down():
        raise InferenceUnavailable("still down")

    with pytest.raises(RetriesExhausted) as caught:
        await retrying(down, Backoff(0.01, 0.02, 0.1))
    assert caught.value.attempts >= 3
    assert "still down" in str(caught.value)


async def test_a_permanent_failure_is_not_retried():
    calls = []

    async def invalid():
        calls.append(1)
        raise InvalidRequest("bad")

    with pytest.raises(InvalidRequest):
        await retrying(invalid, Backoff(0.001, 0.002, 5))
    assert len(calls) == 1
