from __future__ import annotations

from pipeline.scaling.lag import Offsets, backlog_of
from pipeline.scaling.rates import RateMeter, worker_rates


def reading(at: float, stable: int, committed: int):
    """One partition's backlog at `at`, with every record after the committed offset a request."""
    offsets = {0: Offsets(first=0, stable=stable, committed=committed)}
    return backlog_of(at, offsets, {0: (committed, at)} if stable > committed else {})


def test_arrival_and_consume_rates_come_from_the_offsets_moving():
    meter = RateMeter(prior_per_worker_s=5_000, settle_s=5)
    first = meter.update(reading(0.0, 10_000, 0), workers=2)
    assert first.per_worker_per_s == 5_000 and not first.measured, "the prior until a measure"
    rates = meter.update(reading(10.0, 20_000, 6_000), workers=2)
    assert rates.arrival_per_s == 1_000 and rates.consume_per_s == 600
    assert rates.per_worker_per_s == 300 and rates.measured


def test_a_worker_is_measured_only_while_busy_and_settled():
    meter = RateMeter(prior_per_worker_s=5_000, settle_s=3)
    meter.update(reading(0.0, 1_000, 0), workers=1)
    idle = meter.update(reading(2.0, 1_000, 1_000), workers=1)
    assert idle.consume_per_s == 500 and not idle.measured, "it ran out of work: its rate says nothing"
    meter.changed(2.0)
    meter.update(reading(4.0, 9_000, 1_000), workers=3)
    restoring = meter.update(reading(6.0, 10_000, 1_200), workers=3)
    assert not restoring.measured, "within a rebalance's restore of the change"
    settled = meter.update(reading(8.0, 20_000, 7_200), workers=3)
    assert settled.measured and settled.per_worker_per_s == 1_000


def test_steady_traffic_with_a_little_waiting_is_no_measure_of_a_worker():
    # 1,000/s arriving and taken; ~50 requests always await the next commit.
    meter = RateMeter(prior_per_worker_s=5_000, settle_s=0)
    for tick in range(5):
        rates = meter.update(reading(2.0 * tick, 2_000 * tick + 50, 2_000 * tick), workers=2)
    assert rates.consume_per_s == 1_000 and rates.arrival_per_s == 1_000
    assert not rates.measured and rates.per_worker_per_s == 5_000, "keeping up is not their top rate"


def test_measures_are_smoothed():
    meter = RateMeter(prior_per_worker_s=5_000, settle_s=0)
    meter.update(reading(0.0, 100_000, 0), workers=1)
    meter.update(reading(1.0, 100_000, 1_000), workers=1)
    slow = meter.update(reading(2.0, 100_000, 1_200), workers=1)
    assert slow.per_worker_per_s == 600, "one slow interval halves the way, not all of it"


def test_each_workers_rate_is_what_its_partitions_moved():
    before = backlog_of(0.0, {p: Offsets(first=0, stable=1_000, committed=100) for p in range(4)}, {})
    after = backlog_of(
        2.0,
        {0: Offsets(0, 1_000, 500), 1: Offsets(0, 1_000, 300), 2: Offsets(0, 1_000, 100), 3: Offsets(0, 1_000, 900)},
        {},
    )
    rates = worker_rates(before, after, {"w-0": [0, 1], "w-1": [2], "w-2": [3]})
    assert rates == {"w-0": 300.0, "w-1": 0.0, "w-2": 400.0}
