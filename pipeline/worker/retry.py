"""Capped exponential backoff for transient failures (Triton or the feature store unavailable)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pipeline.errors import PipelineError

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.1
    max_s: float = 5.0
    budget_s: float = 60.0

    def delays(self) -> Iterator[float]:
        """0.1, 0.2, 0.4, ... capped at max_s; the caller stops when the budget is spent."""
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


class RetriesExhausted(Exception):
    def __init__(self, attempts: int, last: PipelineError) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last.message}")
        self.attempts = attempts
        self.last = last


async def retrying(
    operation: Callable[[], Awaitable[T]],
    backoff: Backoff,
    on_retry: Callable[[PipelineError, int, float], None] = lambda error, attempt, delay: None,
) -> tuple[T, int]:
    """Run `operation` until it succeeds or a non-retriable error; returns (value, attempts)."""
    deadline = time.monotonic() + backoff.budget_s
    for attempts, delay in enumerate(backoff.delays(), start=1):
        try:
            return await operation(), attempts
        except PipelineError as e:
            if not e.retriable:
                raise
            if time.monotonic() + delay > deadline:
                raise RetriesExhausted(attempts, e) from e
            on_retry(e, attempts, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
