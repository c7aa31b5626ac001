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

import struct
from collections.abc import Iterable

# An entry is the time it was stored (8 bytes) followed by the result, in a plain dict per partition
# (insertion-ordered, so oldest first). Bytes under string keys keep those dicts out of the garbage
# collector's sight: it never walks the state (docs/performance.md#garbage-collector).
_STAMP = struct.Struct("<d")


class DedupState:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._partitions: dict[int, dict[str, bytes]] = {}
        self._where: dict[str, int] = {}

    def get(self, event_id: str) -> bytes | None:
        partition = self._where.get(event_id)
        if partition is None:
            return None
        return self._partitions[partition][event_id][_STAMP.size :]

    def put(self, partition: int, event_id: str, result: bytes, stored_at: float) -> None:
        entries = self._partitions.get(partition)
        if entries is None:
            entries = self._partitions[partition] = {}
        entries.pop(event_id, None)  # a repeat goes to the end: the order stays the time order
        entries[event_id] = _STAMP.pack(stored_at) + result
        self._where[event_id] = partition

    def load(self, partition: int, records: Iterable[tuple[str, bytes, float]], now: float) -> None:
        """Rebuild a partition from its changelog: (event_id, result, time), oldest first."""
        self.drop(partition)
        self._partitions[partition] = {}
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
            if not entries:
                continue
            old = []
            for event_id, entry in entries.items():
                if _STAMP.unpack_from(entry)[0] >= cutoff:
                    break
                old.append(event_id)
            # Deleted in one sweep: taking the first key again after each deletion would rescan the
            # deleted slots at the front of the dict every time.
            for event_id in old:
                del entries[event_id]
                self._where.pop(event_id, None)
            expired += len(old)
        return expired

    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def __len__(self) -> int:
        return len(self._where)
