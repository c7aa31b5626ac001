"""Idempotency state: the result of every scored `event_id`, per input partition, for a window.

A repeat of a scored `event_id` gets no second result; a repeat with a reply address gets the
stored result back. The entry for an event lives with the input partition its request came from
(repeats of one event share a partition by key) and is the result itself, written to the same
partition of the results topic in the transaction that commits the request (see `changelog`).

Committed entries are in the on-disk `store`; entries of batches scored but not yet committed are
in a small overlay in memory, which later batches see. A commit moves its entries to the store with
the results offsets it reached; an abort drops the overlay of its partitions, leaving exactly what
is committed. Pure bookkeeping over the store: no Kafka here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipeline.worker.store import StateStore, decode_result, encode_value

# An overlay entry is the value the store will hold (the time it was stored, then the result): bytes
# under string keys keep the overlay out of the garbage collector's sight
# (docs/performance.md#garbage-collector), and a commit hands them to the store as they are.
_EMPTY: dict[str, bytes] = {}


class DedupState:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.window_s = store.window_s
        self._overlay: dict[int, dict[str, bytes]] = {}

    def get_many(self, keys: Sequence[tuple[int, str]], now: float) -> list[bytes | None]:
        """The stored result of each (partition, event_id), or None: the overlay first, then the store."""
        found: list[bytes | None] = [None] * len(keys)
        missing: list[int] = []
        overlay = self._overlay
        for index, (partition, event_id) in enumerate(keys):
            entry = overlay.get(partition, _EMPTY).get(event_id)
            if entry is not None:
                found[index] = decode_result(entry)
            else:
                missing.append(index)
        if len(missing) == len(keys):
            return self.store.get_many(keys, now)
        values = self.store.get_many([keys[i] for i in missing], now)
        for index, value in zip(missing, values, strict=True):
            found[index] = value
        return found

    def put(self, partition: int, event_id: str, result: bytes, stored_at: float) -> None:
        """A scored, not yet committed entry."""
        self.put_many([(event_id, partition, result)], stored_at)

    def put_many(self, entries: Iterable[tuple[str, int, bytes]], stored_at: float) -> None:
        """A scored batch's (event_id, partition, result), not yet committed, all stored at one time."""
        overlay, stamp = self._overlay, encode_value(b"", stored_at)
        for event_id, partition, result in entries:
            if (entries_of := overlay.get(partition)) is None:
                entries_of = overlay[partition] = {}
            entries_of[event_id] = stamp + result

    def committed(self, entries: Iterable[tuple[str, int, bytes]], offsets: dict[int, int]) -> None:
        """A transaction committed these (event_id, partition, result) and brought each results
        partition to `offsets`: into the store, out of the overlay."""
        overlay = self._overlay
        self.store.write_values(
            (
                (partition, event_id, value)
                for event_id, partition, _ in entries
                if (value := overlay.get(partition, _EMPTY).pop(event_id, None)) is not None
            ),
            offsets,
        )

    def discard(self, partitions: Iterable[int]) -> int:
        """Forget what is not committed of these partitions (their transaction aborted, or they were
        revoked); returns how many entries."""
        return sum(len(self._overlay.pop(partition, {})) for partition in partitions)

    def uncommitted(self) -> int:
        return sum(len(entries) for entries in self._overlay.values())
