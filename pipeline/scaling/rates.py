"""Rates from two backlog readings, pure: requests arriving, the group's consume rate, one worker's.

One worker's rate is only measured while it has work throughout (at both readings more waiting than
the group took over the interval) and the
count has not changed for a restore's time (a rebalance's pause is no measure of a worker); in between,
the last measure holds, smoothed over readings so that one slow interval does not swing the policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.scaling.lag import Backlog


@dataclass(frozen=True)
class Rates:
    arrival_per_s: float = 0.0
    consume_per_s: float = 0.0
    per_worker_per_s: float = 0.0
    measured: bool = False  # per_worker_per_s measured (else the configured prior)
    # The group's consume rate over the last interval where its workers were busy and settled (else None):
    # its drain rate, what a step up is judged by.
    group_per_s: float | None = None


def worker_rates(last: Backlog, now: Backlog, assignment: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Pure: each worker's consume rate (requests/s) over its assigned partitions between two readings."""
    elapsed = now.at - last.at
    if elapsed <= 0:
        return {}

    def consumed(partition: int) -> int:
        before, after = last.offsets.get(partition), now.offsets.get(partition)
        return max(0, after.position - before.position) if before is not None and after is not None else 0

    return {worker: sum(map(consumed, partitions)) / elapsed for worker, partitions in sorted(assignment.items())}


@dataclass
class RateMeter:
    prior_per_worker_s: float  # one worker's rate until one is measured
    settle_s: float  # after a change of count, this long before a worker's rate counts
    smoothing: float = 0.5  # weight of the newest measure
    _last: Backlog | None = None
    _changed_at: float = float("-inf")
    rates: Rates | None = None

    def __post_init__(self) -> None:
        self.rates = Rates(per_worker_per_s=self.prior_per_worker_s)

    def changed(self, at: float) -> None:
        """The number of workers changed at `at`."""
        self._changed_at = at

    def update(self, backlog: Backlog, workers: int) -> Rates:
        last, self._last = self._last, backlog
        assert self.rates is not None
        if last is None or backlog.at <= last.at or set(last.offsets) != set(backlog.offsets):
            return self.rates
        elapsed = backlog.at - last.at
        arrival = max(0, backlog.stable_total - last.stable_total) / elapsed
        consumed = max(0, backlog.consumed_total - last.consumed_total) / elapsed
        per_worker, measured = self.rates.per_worker_per_s, self.rates.measured
        # Busy: at both readings more was waiting than the group took in the whole interval, so its
        # workers never ran short. A lag of what merely awaits the next commit is no backlog, and
        # steady traffic would otherwise read as the workers' top rate.
        took = consumed * elapsed
        busy = took > 0 and workers > 0 and min(last.lag, backlog.lag) >= took
        group = None
        if busy and last.at - self._changed_at >= self.settle_s:
            now, group = consumed / workers, consumed
            per_worker = now if not measured else self.smoothing * now + (1 - self.smoothing) * per_worker
            measured = True
        self.rates = Rates(arrival, consumed, per_worker, measured, group)
        return self.rates

    def learnt(self, per_worker_per_s: float) -> None:
        """One worker's rate as measured before (a restart's): it stands until the next measure."""
        self.rates = Rates(per_worker_per_s=per_worker_per_s, measured=True)
