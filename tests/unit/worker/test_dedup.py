"""The dedup state: an overlay of scored, uncommitted entries (their results) over the on-disk store of
committed ones (where their results are)."""

from __future__ import annotations

import gc

import pytest

from pipeline.worker.dedup import DedupState
from pipeline.worker.store import UNBOUNDED, Located, StateStore

NOW = 1_000_000.0


@pytest.fixture
def state(tmp_path) -> DedupState:
    return DedupState(StateStore(tmp_path, {"app_id": "a"}, window_s=100, cache_bytes=8 << 20))


def test_a_scored_entry_is_seen_by_later_batches_before_it_is_committed(state):
    state.put_many([("e1", 3, b"r1")])
    assert state.get_many([(3, "e1"), (3, "e2")], NOW) == [b"r1", None]
    assert state.uncommitted() == 1
    assert state.store.get_many([(3, "e1")], NOW) == [None], "only committed entries reach the store"


def test_a_commit_moves_its_entries_to_the_store_between_the_offsets_it_spans(state):
    state.store.write(3, [], offset=4)  # where an earlier commit (or the restore) left partition 3
    state.put_many([("e1", 3, b"r1"), ("e2", 3, b"r2"), ("e3", 4, b"r3")])

    state.committed([("e1", 3, b"r1"), ("e3", 4, b"r3")], {3: 11, 4: 5}, NOW)

    assert state.uncommitted() == 1, "e2 belongs to a later transaction"
    assert state.store.get_many([(3, "e1"), (3, "e2")], NOW) == [Located(4, 11), None]
    assert state.store.offset(3) == 11 and state.store.offset(4) == 5
    assert state.get_many([(3, "e1"), (3, "e2"), (4, "e3")], NOW) == [Located(4, 11), b"r2", Located(0, 5)]


def test_the_next_commit_of_a_partition_starts_where_the_last_one_ended(state):
    state.put_many([("a", 1, b"ra")])
    state.committed([("a", 1, b"ra")], {1: 3}, NOW)
    state.put_many([("b", 1, b"rb"), ("c", 2, b"rc")])

    state.committed([("b", 1, b"rb"), ("c", 2, b"rc"), ("never-put", 2, b"x")], {1: 9}, NOW)

    assert state.uncommitted() == 0
    found = state.store.get_many([(1, "a"), (1, "b"), (2, "c"), (2, "never-put")], NOW)
    assert found == [Located(0, 3), Located(3, 9), Located(0, UNBOUNDED), None], "no end known for 2: to its end"


def test_an_abort_drops_what_is_uncommitted_of_its_partitions_and_keeps_what_is_committed(state):
    state.put_many([("kept", 1, b"k")])
    state.committed([("kept", 1, b"k")], {1: 1}, NOW)
    state.put_many([("aborted", 1, b"a"), ("other", 2, b"o")])

    assert state.discard([1]) == 1

    assert state.get_many([(1, "kept"), (1, "aborted"), (2, "other")], NOW) == [Located(0, 1), None, b"o"]


def test_entries_older_than_the_window_are_not_found(state):
    state.put_many([("old", 0, b"r")])
    state.committed([("old", 0, b"r")], {0: 1}, NOW - 101)
    assert state.get_many([(0, "old")], NOW) == [None]
    assert state.get_many([(0, "old")], NOW - 50) == [Located(0, 1)]


def test_the_garbage_collector_never_walks_the_overlay(state):
    # Strings and bytes only: the collector does not track the overlay (docs/performance.md#garbage-collector).
    state.put_many((f"e{i}", i % 3, b'{"score": 0.5}') for i in range(1000))
    assert not any(gc.is_tracked(entries) for entries in state._overlay.values())
