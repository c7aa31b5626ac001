"""Idempotency state: the result of every scored `event_id`, in a changelog-backed Faust table.

A repeat of a scored `event_id` gets no second result; a repeat with a reply address gets the
stored result back. The table is co-partitioned with the requests topic: an entry lives in the
changelog partition of the request that produced it, so after a rebalance it moves with that
partition (requests of one entity, and so repeats of one event, share a partition by key).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol


class DedupStore(Protocol):
    def get(self, event_id: str) -> bytes | None: ...

    async def remember(self, event_id: str, partition: int, result: bytes) -> Awaitable[Any]:
        """Record locally now; returns the changelog write to await before offsets are committed."""
        ...


class TableDedupStore:
    """DedupStore on a Faust table (raw keys and values). The changelog write names its partition
    explicitly, as batches mix partitions and Faust's implicit "current event" would not."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, event_id: str) -> bytes | None:
        value: bytes | None = self._table.data.get(event_id.encode())
        return value

    async def remember(self, event_id: str, partition: int, result: bytes) -> Awaitable[Any]:
        key = event_id.encode()
        self._table.data[key] = result
        sent: Awaitable[Any] = await self._table.changelog_topic.send(
            key=key, value=result, partition=partition, key_serializer="raw", value_serializer="raw", force=True
        )
        return sent

    def __len__(self) -> int:
        return len(self._table.data)
