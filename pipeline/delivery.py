"""Delivery semantics, in one place.

Today's guarantee is at-least-once publishing plus idempotent dedup, which is effectively-once
except across a crash between steps 1 and 3 (then a batch may be re-scored and a result
repeated; Kafka transactions close that window next). For each batch, in order:

1. Publish every result, reply and dead letter, and wait until the broker has acknowledged them
   all (acks=all). A result is never lost: offsets are not committed before this.
2. Write the batch's dedup entries to the table's changelog and wait for their acks. Results come
   first: a crash between 1 and 2 re-scores (a duplicate) instead of dropping (a loss).
3. Return; the worker then acknowledges the batch's events and Faust commits their offsets on its
   commit interval. A crash before the commit replays the batch, and step 2's entries turn the
   replays into duplicates that are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from pipeline import metrics
from pipeline.dedup import DedupStore
from pipeline.processor import Outcome


class Sender(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]: ...


class Delivery:
    def __init__(self, sender: Sender, dedup: DedupStore) -> None:
        self._sender = sender
        self._dedup = dedup

    async def deliver(self, outcome: Outcome) -> None:
        with metrics.STAGE_SECONDS.labels("produce").time():
            sent = [
                await self._sender.send(m.topic, m.key, m.value, m.partition, None, list(m.headers))
                for m in outcome.messages
            ]
            await asyncio.gather(*sent)
            remembered = [
                await self._dedup.remember(event_id, partition, value)
                for event_id, partition, value in outcome.remembered
            ]
            await asyncio.gather(*remembered)
