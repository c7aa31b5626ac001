from __future__ import annotations

import asyncio

from pipeline.settings import Settings
from pipeline.worker.delivery import rewind_points
from pipeline.worker.lanes import Lanes
from pipeline.worker.messages import DedupEntry, Outbound


class _Record:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def _lanes(count: int = 3) -> Lanes:
    return Lanes(Settings().updated(worker={"transaction_lanes": count}), "requests", group_metadata=lambda: None)


def test_each_part_of_a_batch_goes_to_the_lane_of_its_input_partition():
    lanes = _lanes(3)
    records = [_Record(p, 10 + p) for p in range(6)]
    messages = [Outbound(p, "results", b"k", b"v", p) for p in range(6)]
    entries = [DedupEntry(f"e{p}", p, b"v") for p in range(6)]
    lanes.add(records, messages, entries, after=[Outbound(4, "replies", b"k", b"a")])
    states = lanes.states()
    assert [s.pending for s in states] == [1, 1, 1]
    for index in range(3):
        (scored,) = lanes.lane(index)._pending
        assert {r.partition() for r in scored.records} == {index, index + 3}
        assert {m.source_partition for m in scored.messages} == {index, index + 3}
        assert {e.partition for e in scored.entries} == {index, index + 3}
        assert [a.source_partition for a in scored.answers] == ([4] if index == 1 else [])


def test_a_lane_waiting_for_a_rewind_drops_what_it_is_handed_of_those_partitions():
    lanes = _lanes(1)
    lanes.lane(0).rewind_to = {2: 7}
    lanes.add([_Record(2, 9), _Record(0, 3)], [Outbound(2, "r", None, b"x"), Outbound(0, "r", None, b"y")], [])
    (scored,) = lanes.lane(0)._pending
    assert [r.partition() for r in scored.records] == [0]
    assert [m.value for m in scored.messages] == [b"y"]
    assert lanes.states()[0].rewinding


def test_an_aborted_transaction_rewinds_each_partition_to_its_first_uncommitted_record():
    scored_since = [_Record(1, 40), _Record(3, 12), _Record(1, 41)]
    assert rewind_points({}, {1: 30, 2: 5}, scored_since) == {1: 30, 2: 5, 3: 12}
    assert rewind_points({3: 8}, {1: 30}, scored_since) == {1: 30, 3: 8}, "never later than one noted"


def test_settling_an_aborted_transaction_drops_what_was_scored_since_and_notes_the_rewinds():
    async def run() -> dict[int, int]:
        lanes = _lanes(1)
        lane = lanes.lane(0)
        lane.add([_Record(0, 100)], [])

        async def aborted() -> bool:
            return False

        lane.inflight = asyncio.ensure_future(aborted())
        lane._inflight_first = {0: 90, 3: 17}
        await lanes.settle([0])
        assert lanes.states()[0].pending == 0
        rewinds = lanes.take_rewinds()
        assert not lanes.states()[0].rewinding, "taken: the lane goes on"
        return rewinds

    assert asyncio.run(run()) == {0: 90, 3: 17}


def test_a_revoked_partition_is_no_longer_rewound_by_this_worker():
    lanes = _lanes(2)
    lanes.lane(1).rewind_to = {1: 4, 3: 8}
    lanes.forget([3])
    assert lanes.take_rewinds() == {1: 4}
