from __future__ import annotations

import time

from pipeline.settings import Settings
from pipeline.worker.lane import Lane


class _Record:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def _lane(linger_ms: int = 50, max_batches: int = 3) -> Lane:
    settings = Settings().updated(
        worker={"transaction_linger_ms": linger_ms, "max_batches_per_transaction": max_batches}
    )
    return Lane(settings, "requests", 0, group_metadata=lambda: None)


def test_a_gathering_transaction_is_due_when_its_oldest_batch_is_linger_old_or_the_lane_is_full():
    lane = _lane(linger_ms=50, max_batches=3)
    assert lane.ripe_in() is None, "nothing to commit"

    lane.add([_Record(1, 10)], [])
    due = lane.ripe_in()
    assert due is not None and due <= 0.05 and not lane.ripe

    lane.add([_Record(1, 11)], [])
    lane.add([_Record(2, 5)], [])
    assert lane.ripe_in() == 0.0 and lane.ripe, "max_batches_per_transaction reached"


def test_a_lane_waiting_for_a_rewind_has_nothing_due():
    lane = _lane(linger_ms=0)
    lane.add([_Record(1, 10)], [])
    lane.rewind_to = {2: 7}
    assert lane.ripe_in() is None


def test_the_oldest_batch_sets_the_time():
    lane = _lane(linger_ms=40, max_batches=10)
    lane.add([_Record(1, 10)], [])
    time.sleep(0.02)
    lane.add([_Record(1, 11)], [])
    due = lane.ripe_in()
    assert due is not None and due <= 0.021
