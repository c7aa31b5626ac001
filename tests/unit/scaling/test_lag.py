from __future__ import annotations

from pipeline.scaling.lag import lag


def test_lag_runs_from_the_committed_offset_to_the_last_stable_offset():
    assert lag(last_stable=1_000, committed=400, first=0) == 600
    assert lag(last_stable=1_000, committed=1_000, first=0) == 0, "caught up: markers are not work"


def test_without_a_committed_offset_the_whole_partition_is_lag():
    assert lag(last_stable=1_000, committed=-1, first=200) == 800


def test_a_committed_offset_before_the_retained_start_counts_from_the_start():
    assert lag(last_stable=1_000, committed=50, first=200) == 800
