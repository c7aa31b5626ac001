"""The on-disk store of committed dedup entries, on a real RocksDB in a temporary directory."""

from __future__ import annotations

import time

import pytest

from pipeline.worker.store import Located, StateStore, StoreInUse, encode_value

IDENTITY = {"app_id": "a", "requests": "inference.requests", "partitions": 12}
WINDOW_S = 100.0
NOW = 1_000_000.0


def _store(path, identity=IDENTITY) -> StateStore:
    return StateStore(path, identity, WINDOW_S, cache_bytes=8 << 20)


def test_entries_say_where_their_result_is_per_partition_and_expire_by_their_own_time(tmp_path):
    store = _store(tmp_path)
    store.write(3, [("e1", 40, NOW - 10), ("old", 41, NOW - WINDOW_S - 1)], offset=42)

    assert store.get_many([(3, "e1"), (3, "old"), (3, "never")], NOW) == [Located(40, 41), None, None]
    assert store.get_many([(4, "e1")], NOW) == [None], "entries belong to their partition"
    assert store.offset(3) == 42 and store.offset(4) is None


def test_a_restart_on_the_same_directory_keeps_entries_and_offsets(tmp_path):
    store = _store(tmp_path)
    store.write(0, [("e1", 6, NOW)], offset=7)
    store.close()

    again = _store(tmp_path)
    assert again.get_many([(0, "e1")], NOW) == [Located(6, 7)]
    assert again.offset(0) == 7


def test_forgetting_a_partition_leaves_the_others(tmp_path):
    store = _store(tmp_path)
    store.write(1, [("a", 0, NOW)], offset=1)
    store.write(2, [("b", 1, NOW)], offset=2)

    store.forget(1)

    assert store.get_many([(1, "a")], NOW) == [None] and store.offset(1) is None
    assert store.get_many([(2, "b")], NOW) == [Located(1, 2)] and store.offset(2) == 2


@pytest.mark.parametrize(
    "other", [dict(IDENTITY, app_id="b"), dict(IDENTITY, requests="other"), dict(IDENTITY, partitions=24)]
)
def test_a_directory_written_for_another_app_topic_or_partition_count_is_wiped(tmp_path, other):
    store = _store(tmp_path)
    store.write(0, [("e1", 6, NOW)], offset=7)
    store.close()

    again = _store(tmp_path, other)
    assert again.get_many([(0, "e1")], NOW) == [None]
    assert again.offset(0) is None


def test_a_corrupt_store_is_wiped_not_trusted(tmp_path):
    store = _store(tmp_path)
    store.write(0, [("e1", 6, NOW)], offset=7)
    store.close()
    for current in (tmp_path / "rocksdb").glob("CURRENT"):
        current.write_text("garbage\n")

    again = _store(tmp_path)
    assert again.offset(0) is None


def test_a_directory_in_use_by_another_worker_is_refused(tmp_path):
    held = _store(tmp_path)
    with pytest.raises(StoreInUse, match="in use by another worker"):
        _store(tmp_path)
    held.close()


def test_compaction_drops_what_has_expired(tmp_path):
    store = StateStore(tmp_path, IDENTITY, window_s=1.0, cache_bytes=8 << 20)
    store.write(0, [(f"e{i}", i, NOW) for i in range(100)], offset=100)
    assert store.estimated_entries() == 100
    time.sleep(3.5)  # past RocksDB's TTL (the window plus a second, counted in whole seconds)

    store.compact()

    assert store.estimated_entries() == 0, "expired entries leave the disk without a sweep of ours"


def test_one_transactions_partitions_are_written_in_one_batch(tmp_path):
    store = _store(tmp_path)
    one, other = encode_value(NOW, 3, 5), encode_value(NOW, 0, 8)
    written = store.write_values([(1, "a", one), (1, "b", one), (3, "c", other)], {1: 5, 2: 9})
    assert written == 3
    found = store.get_many([(1, "a"), (1, "b"), (3, "c"), (2, "a")], NOW)
    assert found == [Located(3, 5), Located(3, 5), Located(0, 8), None]
    assert (store.offset(1), store.offset(2), store.offset(3)) == (5, 9, None)


def test_a_directory_of_another_value_format_is_wiped(tmp_path):
    store = _store(tmp_path)
    store.write(0, [("e1", 6, NOW)], offset=7)
    store.close()
    identity = tmp_path / "identity.json"
    identity.write_text(identity.read_text().replace('"format": 2', '"format": 1'))

    again = _store(tmp_path)
    assert again.get_many([(0, "e1")], NOW) == [None] and again.offset(0) is None
