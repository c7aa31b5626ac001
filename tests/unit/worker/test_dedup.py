"""The dedup state: an overlay of scored, uncommitted entries over the on-disk store of committed ones."""

from __future__ import annotations

import gc

import pytest

from pipeline.worker.dedup import DedupState
from pipeline.worker.store import StateStore

NOW = 1_000_000.0


@pytest.fixture
def state(tmp_path) -> DedupState:
    return DedupState(StateStore(tmp_path, {"app_id": "a"}, window_s=100, cache_bytes=8 << 20))


def test_a_scored_entry_is_seen_by_later_batches_before_it_is_committed(state):
    state.put(3, "e1", b"r1", stored_at=NOW)
    assert state.get_many([(3, "e1"), (3, "e2")], NOW) == [b"r1", None]
    assert state.uncommitted() == 1
    assert state.store.get_many([(3, "e1")], NOW) == [None], "only committed entries reach the store"


def test_a_commit_moves_its_entries_to_the_store_with_the_offsets_it_reached(state):
    state.put(3, "e1", b"r1", stored_at=NOW)
    state.put(3, "e2", b"r2", stored_at=NOW)
    state.put(4, "e3", b"r3", stored_at=NOW)

    state.committed([("e1", 3, b"r1"), ("e3", 4, b"r3")], {3: 11, 4: 5})

    assert state.uncommitted() == 1, "e2 belongs to a later transaction"
    assert state.store.get_many([(3, "e1"), (3, "e2")], NOW) == [b"r1", None]
    assert state.store.offset(3) == 11 and state.store.offset(4) == 5
    assert state.get_many([(3, "e1"), (3, "e2"), (4, "e3")], NOW) == [b"r1", b"r2", b"r3"]


def test_a_scored_batch_put_at_once_is_committed_with_its_stored_time(state):
    state.put_many([("a", 1, b"ra"), ("b", 2, b"rb")], stored_at=NOW - 60)
    assert state.get_many([(1, "a"), (2, "b")], NOW) == [b"ra", b"rb"]

    state.committed([("a", 1, b"ra"), ("b", 2, b"rb"), ("never-put", 2, b"x")], {1: 3})

    assert state.uncommitted() == 0
    assert state.store.get_many([(1, "a"), (2, "b"), (2, "never-put")], NOW) == [b"ra", b"rb", None]
    assert state.store.get_many([(1, "a")], NOW + 41) == [None], "stored 60 s before NOW: expired 100 s after"


def test_an_abort_drops_what_is_uncommitted_of_its_partitions_and_keeps_what_is_committed(state):
    state.put(1, "kept", b"k", stored_at=NOW)
    state.committed([("kept", 1, b"k")], {1: 1})
    state.put(1, "aborted", b"a", stored_at=NOW)
    state.put(2, "other", b"o", stored_at=NOW)

    assert state.discard([1]) == 1

    assert state.get_many([(1, "kept"), (1, "aborted"), (2, "other")], NOW) == [b"k", None, b"o"]


def test_entries_older_than_the_window_are_not_found(state):
    state.put(0, "old", b"r", stored_at=NOW - 101)
    state.committed([("old", 0, b"r")], {0: 1})
    assert state.get_many([(0, "old")], NOW) == [None]
    assert state.get_many([(0, "old")], NOW - 50) == [b"r"]


def test_the_garbage_collector_never_walks_the_overlay(state):
    # Strings and bytes only: the collector does not track the overlay (docs/performance.md#garbage-collector).
    for i in range(1000):
        state.put(i % 3, f"e{i}", b'{"score": 0.5}', stored_at=NOW)
    assert not any(gc.is_tracked(entries) for entries in state._overlay.values())
