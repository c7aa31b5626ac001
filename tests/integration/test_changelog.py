"""Restoring partitions' dedup state from their results partitions, on the real broker: the partitions
of one assignment come back as each one's tail is in (a long one does not hold the others back), a
partition no longer wanted stops being read and keeps its progress, a warm restore reads only what
was written after the store's recorded offset, and a commit the worker counted aborted is read into
its state by the rewind's reload."""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import Producer

from pipeline.worker import changelog, startup
from pipeline.worker.dedup import DedupState
from pipeline.worker.messages import DedupEntry
from pipeline.worker.ownership import Ownership
from pipeline.worker.result_reader import ResultReader
from pipeline.worker.store import UNBOUNDED, Located

pytestmark = pytest.mark.integration

LONG = 30_000  # results on partition 0; partitions 1 and 2 hold a few
RESULT = b'{"score":0.5}'


def _publish(settings, partition: int, count: int, prefix: str, value=lambda i: RESULT) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 20})
    for i in range(count):
        while True:
            try:
                producer.produce(settings.topics.results, value(i), f"{prefix}{i}".encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def _restore(settings, store, partitions, wanted=None) -> list[tuple[int, changelog.Restored]]:
    async def run() -> list[tuple[int, changelog.Restored]]:
        restorer = changelog.Restorer(settings, store)
        try:
            return [r async for r in restorer.restore(partitions, wanted)]
        finally:
            await restorer.close()

    return asyncio.run(run())


def test_short_tails_are_restored_before_a_long_one_ends_and_a_warm_restore_reads_only_the_rest(
    pipeline_settings, tmp_path
):
    settings = pipeline_settings(state_dir=tmp_path)
    _publish(settings, 0, LONG, "long-")
    _publish(settings, 1, 5, "p1-")
    store = startup.open_store(settings, 12)
    try:
        restored = _restore(settings, store, [0, 1, 2])

        assert [p for p, _ in restored][-1] == 0, "the long partition is the last one in"
        assert {p: (r.mode, r.entries) for p, r in restored} == {0: ("cold", LONG), 1: ("cold", 5), 2: ("cold", 0)}
        keys = [(0, "long-0"), (0, f"long-{LONG - 1}"), (1, "p1-4"), (2, "p1-4")]
        expected = [Located(0, 1), Located(LONG - 1, LONG), Located(4, 5), None]
        assert store.get_many(keys, time.time()) == expected, "each entry where its result is, in its partition"
        assert (store.offset(0), store.offset(1), store.offset(2)) == (LONG, 5, 0)

        _publish(settings, 1, 3, "p1-more-")
        again = dict(_restore(settings, store, [0, 1]))
        assert (again[0].mode, again[0].entries) == ("warm", 0)
        assert (again[1].mode, again[1].entries) == ("warm", 3), "only what came after the recorded offset"
    finally:
        store.close()


def test_a_partition_no_longer_wanted_stops_being_read_and_keeps_its_progress(pipeline_settings, tmp_path):
    settings = pipeline_settings(state_dir=tmp_path)
    _publish(settings, 0, LONG, "long-")
    _publish(settings, 1, 5, "p1-")
    store = startup.open_store(settings, 12)
    wanted = {0, 1}

    def still_wanted(partition: int) -> bool:
        if partition == 0 and (store.offset(0) or 0) > 0:
            wanted.discard(0)  # revoked once it has made some progress
        return partition in wanted

    try:
        restored = _restore(settings, store, [0, 1], still_wanted)

        assert [p for p, _ in restored] == [1], "a revoked partition is not reported restored"
        kept = store.offset(0)
        assert kept is not None and 0 < kept < LONG, f"partition 0 kept its progress ({kept})"
        resumed = dict(_restore(settings, store, [0]))
        assert resumed[0].mode == "warm" and resumed[0].entries == LONG - kept
    finally:
        store.close()


def test_a_committed_result_is_read_back_from_where_the_store_says_it_is(pipeline_settings):
    settings = pipeline_settings()
    _publish(settings, 3, 200, "r3-", value=lambda i: b'{"n":%d}' % i)
    _publish(settings, 4, 10, "r4-", value=lambda i: b'{"m":%d}' % i)
    located = [
        (3, "r3-7", Located(0, 50)),  # one transaction's span of the partition
        (3, "r3-199", Located(199, 200)),
        (4, "r4-9", Located(5, UNBOUNDED)),  # no end known: up to the partition's end
        (4, "r4-2", Located(5, 10)),  # not where it is said to be
        (3, "never", Located(0, 200)),
    ]

    async def run() -> dict[tuple[int, str], bytes]:
        stored = ResultReader(settings)
        try:
            first = await stored.read(located)
            assert await stored.read(located[:1]) == {(3, "r3-7"): b'{"n":7}'}, "the reader is used again"
            return first
        finally:
            await stored.close()

    assert asyncio.run(run()) == {(3, "r3-7"): b'{"n":7}', (3, "r3-199"): b'{"n":199}', (4, "r4-9"): b'{"m":9}'}


def test_a_commit_whose_end_the_worker_did_not_see_is_in_its_state_after_an_abort(pipeline_settings, tmp_path):
    """A commit that stalls is left behind and its producer replaced; the replacement's init settles
    the open transaction, committed if the coordinator had begun to commit it, while the worker
    counts it aborted. Its rewind drops the overlay and reads the results partitions on: the events
    are repeats, found where their results are, not scored a second time."""
    settings = pipeline_settings(state_dir=tmp_path)
    store = startup.open_store(settings, 12)
    state = DedupState(store)
    scored = [DedupEntry(f"unseen-{i}", 1, RESULT) for i in range(3)]
    keys = [(1, entry.key) for entry in scored]

    async def run() -> tuple[list, list]:
        ownership = Ownership(changelog.Restorer(settings, store), _nothing, _nothing, lambda: None)
        try:
            _publish(settings, 1, 3, "before-")
            await ownership.reload([1])
            assert store.offset(1) == 3
            state.put_many(scored)  # scored; their transaction then commits, unseen
            producer = Producer(
                {"bootstrap.servers": settings.kafka.bootstrap_servers, "transactional.id": f"unseen-{tmp_path.name}"}
            )
            producer.init_transactions(30)
            producer.begin_transaction()
            for entry in scored:
                producer.produce(settings.topics.results, RESULT, entry.key.encode(), partition=1)
            producer.commit_transaction(30)
            state.discard([1])
            dropped = state.get_many(keys, time.time())
            await ownership.reload([1])
            return dropped, state.get_many(keys, time.time())
        finally:
            await ownership.close()

    try:
        dropped, reloaded = asyncio.run(run())
        assert dropped == [None] * 3, "the store alone: as if never scored"
        assert reloaded == [Located(3, 4), Located(4, 5), Located(5, 6)], "repeats, where their results are"
        assert (store.offset(1) or 0) >= 6, "past its results"
    finally:
        store.close()


async def _nothing(*_) -> None:
    return None
