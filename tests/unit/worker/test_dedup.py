from __future__ import annotations

from pipeline.worker.dedup import DedupState


def test_a_stored_result_is_found_by_event_id():
    state = DedupState(window_s=100)
    state.put(3, "e1", b"r1", stored_at=10)
    assert state.get("e1") == b"r1"
    assert state.get("e2") is None
    assert len(state) == 1


def test_entries_older_than_the_window_expire_oldest_first():
    state = DedupState(window_s=100)
    for i in range(5):
        state.put(0, f"e{i}", b"r", stored_at=i * 50)
    expired = state.expire(now=260)  # cutoff 160: e0 (0), e1 (50), e2 (100), e3 (150) go
    assert expired == 4
    assert [state.get(f"e{i}") for i in range(5)] == [None, None, None, None, b"r"]
    assert len(state) == 1


def test_the_state_stays_bounded_on_an_endless_stream():
    state = DedupState(window_s=60)
    sizes = []
    for second in range(1000):
        state.put(second % 12, f"e{second}", b"r", stored_at=second)
        state.expire(now=second)
        sizes.append(len(state))
    assert max(sizes[100:]) <= 61 * 1 + 1


def test_loading_a_changelog_keeps_what_is_within_the_window():
    state = DedupState(window_s=100)
    records = [("a", b"1", 50.0), ("b", b"2", 150.0), ("c", b"3", 190.0)]
    state.load(7, records, now=200)
    assert state.get("a") is None  # older than the window
    assert state.get("b") == b"2"
    assert state.get("c") == b"3"
    state.load(7, records, now=260)  # b is now past the window
    assert state.get("b") is None and state.get("c") == b"3"


def test_dropping_a_partition_forgets_only_its_entries():
    state = DedupState(window_s=100)
    state.put(1, "x", b"1", 0)
    state.put(2, "y", b"2", 0)
    state.drop(1)
    assert state.get("x") is None and state.get("y") == b"2"
    assert state.partitions() == [2]


def test_the_garbage_collector_never_walks_the_state():
    # The per-partition maps hold only strings and bytes, so the collector does not track them and
    # no full collection walks the state (docs/performance.md#garbage-collector).
    import gc

    state = DedupState(window_s=100)
    for i in range(1000):
        state.put(i % 3, f"e{i}", b'{"score": 0.5}', stored_at=i)
    state.load(7, [("x", b"1", 50.0)], now=60)
    assert not any(gc.is_tracked(entries) for entries in state._partitions.values())
    assert not gc.is_tracked(state._where)
    assert state.get("e999") == b'{"score": 0.5}'
