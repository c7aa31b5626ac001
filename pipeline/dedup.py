"""Idempotency state: the result of every scored `event_id`, per input partition, with expiry.

A repeat of a scored `event_id` gets no second result; a repeat with a reply address gets the
stored result back. State is sharded like the requests topic: the entry for an event lives with
the partition its request came from (requests of one entity, and so repeats of one event, share a
partition by key), is the result itself, written to the same partition of the results topic inside
the transaction that commits the request (see `changelog`), and moves with that partition on a
rebalance.

Entries expire after a window (`PIPELINE_WORKER__DEDUP_WINDOW_S`, default 24 h): the state stays
bounded on an endless stream. Pure: no I/O here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: one per scored event, and a frozen __init__ costs ~3x
class Entry:
    result: bytes
    stored_at: float  # epoch seconds


class DedupState:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        # Insertion-ordered per partition, so the oldest entries are expired first.
        self._partitions: dict[int, OrderedDict[str, Entry]] = {}
        self._where: dict[str, int] = {}

    def get(self, event_id: str) -> bytes | None:
        partition = self._where.get(event_id)
        if partition is None:
            return None
        return self._partitions[partition][event_id].result

    def put(self, partition: int, event_id: str, result: bytes, stored_at: float) -> None:
        entries = self._partitions.setdefault(partition, OrderedDict())
        entries.pop(event_id, None)
        entries[event_id] = Entry(result, stored_at)
        self._where[event_id] = partition

    def load(self, partition: int, records: Iterable[tuple[str, bytes, float]], now: float) -> None:
        """Rebuild a partition from its changelog: (event_id, result, time), oldest first."""
        self.drop(partition)
        self._partitions[partition] = OrderedDict()
        for event_id, result, stored_at in records:
            self.put(partition, event_id, result, stored_at)
        self.expire(now, partitions=[partition])

    def drop(self, partition: int) -> None:
        for event_id in self._partitions.pop(partition, {}):
            self._where.pop(event_id, None)

    def expire(self, now: float, partitions: Iterable[int] | None = None) -> int:
        """Forget entries older than the window; returns how many."""
        cutoff = now - self.window_s
        expired = 0
        for partition in list(partitions if partitions is not None else self._partitions):
            entries = self._partitions.get(partition)
            while entries and next(iter(entries.values())).stored_at < cutoff:
                event_id, _ = entries.popitem(last=False)
                self._where.pop(event_id, None)
                expired += 1
        return expired

    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def __len__(self) -> int:
        return len(self._where)
