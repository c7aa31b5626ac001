"""A transaction lane: one transactional producer, and the scored work of the input partitions it owns.

A worker splits its input partitions over a few lanes (partition `p` goes to lane `p % lanes`). Each
lane commits its own partitions' results and offsets, one transaction in flight at a time, the
batches scored meanwhile sharing the next one (group commit). Lanes commit side by side, so a request
waits only for its own lane's transaction, and each transaction spans only its lane's results
partitions: librdkafka sends one produce request per partition, five at a time, and the broker
verifies each partition of a transaction with its coordinator, so a transaction's time grows with the
partitions it spans. Nothing is shared between lanes that a rewind would need: a partition's dedup
entries, results and offsets all live in its own lane.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Message

from pipeline import metrics
from pipeline.settings import Settings
from pipeline.worker.delivery import Aborted, BatchCommit, TransactionalDelivery
from pipeline.worker.processor import Outbound

log = structlog.get_logger(__name__)

Entry = tuple[str, int, bytes]  # a dedup entry: event_id, input partition, result


@dataclass(slots=True)
class _Scored:
    """One scored batch of this lane's partitions, waiting for its transaction."""

    records: list[Message]
    messages: list[Outbound]
    answers: list[Outbound]
    entries: list[Entry]


class Lane:
    def __init__(self, settings: Settings, requests_topic: str, index: int, group_metadata: Callable[[], Any]) -> None:
        self.index = index
        self.delivery = TransactionalDelivery(settings, requests_topic, lane=index)
        self._group_metadata = group_metadata
        self._max_batches = settings.worker.max_batches_per_transaction
        self._linger_s = settings.worker.transaction_linger_ms / 1000
        # The transaction in flight and the first offset of each partition in it; the batches scored
        # since, for the next one; where each partition must restart after an abort.
        self.inflight: asyncio.Task[bool] | None = None
        self._inflight_first: dict[int, int] = {}
        self._pending: list[_Scored] = []
        self._pending_since = 0.0  # monotonic s when the oldest pending batch was scored
        self.rewind_to: dict[int, int] = {}
        # Gets the answers to send once their transaction has committed (an aborted one's are dropped).
        self.on_committed: Callable[[list[Outbound]], None] | None = None
        # Gets a committed transaction's dedup entries and the results offsets it reached.
        self.on_entries_committed: Callable[[list[Entry], dict[int, int]], None] | None = None
        # Told of each aborted transaction.
        self.on_aborted: Callable[[], None] | None = None

    def add(
        self,
        records: list[Message],
        messages: list[Outbound],
        answers: Sequence[Outbound] = (),
        entries: Sequence[Entry] = (),
    ) -> None:
        """Scored records of this lane's partitions, the messages they produced, the answers to send
        once those commit and their dedup entries. Records of a partition waiting to be rewound are
        dropped: they are fetched and scored again."""
        if self.rewind_to:
            records = [r for r in records if r.partition() not in self.rewind_to]
            messages = [m for m in messages if m.source_partition not in self.rewind_to]
            answers = [a for a in answers if a.source_partition not in self.rewind_to]
            entries = [e for e in entries if e[1] not in self.rewind_to]
            if not records:
                return
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(_Scored(records, messages, list(answers), list(entries)))

    @property
    def ripe(self) -> bool:
        """Enough to commit even while more records wait to be scored (see transaction_linger_ms)."""
        return len(self._pending) >= self._max_batches or time.monotonic() - self._pending_since >= self._linger_s

    def ripe_in(self) -> float | None:
        """Seconds until what is pending is ripe, when a transaction could start then; else None."""
        if self.inflight is not None or not self._pending or self.rewind_to:
            return None
        if len(self._pending) >= self._max_batches:
            return 0.0
        return max(0.0, self._pending_since + self._linger_s - time.monotonic())

    @property
    def backed_up(self) -> bool:
        return self.inflight is not None and (self.inflight.done() or len(self._pending) >= self._max_batches)

    def start_commit(self) -> None:
        """Publish every batch scored so far in one transaction, while the loop goes on."""
        if self.inflight is not None or not self._pending or self.rewind_to:
            return
        messages: list[Outbound] = []
        answers: list[Outbound] = []
        entries: list[Entry] = []
        offsets: dict[int, int] = {}
        first: dict[int, int] = {}
        for scored in self._pending:
            messages += scored.messages
            answers += scored.answers
            entries += scored.entries
            for record in scored.records:
                first.setdefault(record.partition(), record.offset())
                offsets[record.partition()] = record.offset() + 1
        self._pending = []
        # The current generation: a rebalance in between revoked (and committed) what we lost.
        commit = BatchCommit(messages=messages, offsets=offsets, group_metadata=self._group_metadata())
        self._inflight_first = first
        self.inflight = asyncio.create_task(self._commit(commit, answers, entries), name="commit")

    async def _commit(self, commit: BatchCommit, answers: list[Outbound], entries: list[Entry]) -> bool:
        try:
            with metrics.STAGE_SECONDS.labels("produce").time():
                results_offsets = await self.delivery.commit(commit)
        except Aborted as e:
            log.warning("transaction_aborted", partitions=sorted(commit.offsets), error=str(e))
            if self.on_aborted is not None:
                self.on_aborted()
            return False
        metrics.TRANSACTIONS.labels(str(self.index)).inc()
        metrics.TRANSACTION_MESSAGES.observe(len(commit.messages))
        if self.on_entries_committed is not None:
            self.on_entries_committed(entries, results_offsets)
        if answers and self.on_committed is not None:
            self.on_committed(answers)
        return True

    async def settle(self) -> None:
        """Wait for the transaction in flight. If it aborted, what was scored since goes too (it saw
        the aborted dedup entries): note where each partition must restart."""
        task = self.inflight
        if task is None:
            return
        committed = await task
        if self.inflight is not task:  # settled meanwhile by the other caller (loop or revocation)
            return
        first, self.inflight, self._inflight_first = self._inflight_first, None, {}
        if committed:
            return
        for scored in self._pending:
            for record in scored.records:
                first.setdefault(record.partition(), record.offset())
        self._pending = []
        for partition, offset in first.items():
            self.rewind_to[partition] = min(offset, self.rewind_to.get(partition, offset))

    async def flush(self) -> None:
        """Commit everything scored (before its partitions are revoked)."""
        await self.settle()
        self.start_commit()
        await self.settle()
