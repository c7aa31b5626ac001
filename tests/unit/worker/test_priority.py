from __future__ import annotations

from pipeline.worker.priority import yields


def test_backfill_yields_above_the_live_lag_and_resumes_only_below_half_of_it():
    states, yielding = [], False
    for lag in (0, 500, 1_001, 900, 600, 499, 0, 1_000):
        yielding = yields(lag, 1_000, yielding)
        states.append(yielding)
    assert states == [False, False, True, True, True, False, False, False]
