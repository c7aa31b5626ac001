"""Idempotency state: every scored `event_id`, per input partition, for a window.

A repeat of a scored `event_id` gets no second result; a repeat with a reply address gets the
original result back. The entry for an event lives with the input partition its request came from
(repeats of one event share a partition by key); its result is written to the same partition of the
results topic in the transaction that commits the request (see `changelog`).

Committed entries are in the on-disk `store`, each with where its result is on the results topic;
entries of batches scored but not yet committed are in a small overlay in memory with their results,
which later batches see. A commit moves its entries to the store with the results offsets it
reached; an abort drops the overlay of its partitions, leaving exactly what is committed. Pure
bookkeeping over the store: no Kafka here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from pipeline.worker.messages import DedupEntry
from pipeline.worker.store import UNBOUNDED, Located, StateStore, encode_value

# Results under string keys: bytes keep the overlay out of the garbage collector's sight
# (docs/performance.md#garbage-collector).
_EMPTY: dict[str, bytes] = {}


class DedupState:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.window_s = store.window_s
        self._overlay: dict[int, dict[str, bytes]] = {}

    def get_many(self, keys: Sequence[tuple[int, str]], now: float) -> list[bytes | Located | None]:
        """For each (partition, event_id): its result if not yet committed (the overlay), where its
        result is if committed (the store), or None."""
        found: list[bytes | Located | None] = [None] * len(keys)
        missing: list[int] = []
        overlay = self._overlay
        for index, (partition, event_id) in enumerate(keys):
            result = overlay.get(partition, _EMPTY).get(event_id)
            if result is not None:
                found[index] = result
            else:
                missing.append(index)
        if len(missing) == len(keys):
            return list(self.store.get_many(keys, now))
        values = self.store.get_many([keys[i] for i in missing], now)
        for index, value in zip(missing, values, strict=True):
            found[index] = value
        return found

    def put_many(self, entries: Iterable[DedupEntry]) -> None:
        """A scored batch's entries, not yet committed."""
        overlay = self._overlay
        for key, partition, result in entries:
            if (entries_of := overlay.get(partition)) is None:
                entries_of = overlay[partition] = {}
            entries_of[key] = result

    def committed(self, entries: Iterable[DedupEntry], offsets: dict[int, int], now: float | None = None) -> None:
        """A transaction committed these entries and brought each results
        partition to `offsets`: into the store, each entry with the offsets its result lies between
        (from where the store had the partition to where this commit brings it), out of the overlay."""
        overlay, store, now = self._overlay, self.store, time.time() if now is None else now
        values: dict[int, bytes] = {}  # one value for every entry of a partition in this commit

        def value(partition: int) -> bytes:
            if (found := values.get(partition)) is None:
                start = store.offset(partition) or 0
                found = values[partition] = encode_value(now, start, offsets.get(partition, UNBOUNDED))
            return found

        store.write_values(
            (
                (partition, key, value(partition))
                for key, partition, _ in entries
                if overlay.get(partition, _EMPTY).pop(key, None) is not None
            ),
            offsets,
        )

    def discard(self, partitions: Iterable[int]) -> int:
        """Forget what is not committed of these partitions (their transaction aborted, or they were
        revoked); returns how many entries."""
        return sum(len(self._overlay.pop(partition, {})) for partition in partitions)

    def uncommitted(self) -> int:
        return sum(len(entries) for entries in self._overlay.values())
