from __future__ import annotations

from pipeline.worker.priority import unreadable_too_long, yields


def test_backfill_yields_above_the_live_lag_and_resumes_only_below_half_of_it():
    states, yielding = [], False
    for lag in (0, 500, 1_001, 900, 600, 499, 0, 1_000):
        yielding = yields(lag, 1_000, yielding)
        states.append(yielding)
    assert states == [False, False, True, True, True, False, False, False]


def test_a_lag_unreadable_for_the_bound_no_longer_holds_the_gate():
    assert not unreadable_too_long(None, 1_000.0, 60.0), "read at the last try"
    assert not unreadable_too_long(950.0, 1_000.0, 60.0)
    assert unreadable_too_long(940.0, 1_000.0, 60.0)
