from __future__ import annotations

from pipeline.scaling.lag import Offsets, backlog_of, lag


def test_lag_runs_from_the_committed_offset_to_the_last_stable_offset():
    assert lag(last_stable=1_000, committed=400, first=0) == 600
    assert lag(last_stable=1_000, committed=1_000, first=0) == 0, "caught up: markers are not work"


def test_without_a_committed_offset_the_whole_partition_is_lag():
    assert lag(last_stable=1_000, committed=-1, first=200) == 800


def test_a_committed_offset_before_the_retained_start_counts_from_the_start():
    assert lag(last_stable=1_000, committed=50, first=200) == 800


def test_a_partition_left_with_only_commit_markers_has_no_lag():
    offsets = {0: Offsets(first=0, stable=101, committed=100), 1: Offsets(first=0, stable=500, committed=100)}
    backlog = backlog_of(at=1_000.0, offsets=offsets, oldest={0: None, 1: (101, 990.0)})
    assert backlog.records == {0: 0, 1: 399}, "no record left before the end: the one offset was a marker"
    assert backlog.lag == 399
    assert backlog.lag_s == 10.0, "the age of the oldest request not consumed"


def test_partitions_not_probed_keep_the_offsets_lag_and_no_age():
    offsets = {0: Offsets(first=0, stable=50, committed=-1), 1: Offsets(first=0, stable=10, committed=10)}
    backlog = backlog_of(at=5.0, offsets=offsets, oldest={})
    assert backlog.records == {0: 50, 1: 0}
    assert backlog.lag_s == 0.0 and backlog.ages_s == {}
    assert backlog.stable_total == 60 and backlog.consumed_total == 10
