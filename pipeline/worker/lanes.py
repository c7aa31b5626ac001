"""Transaction lanes: each one transactional producer, and the scored work of the input partitions it owns.

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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from pipeline import metrics, tracing
from pipeline.settings import Settings
from pipeline.worker.batching import LaneState
from pipeline.worker.delivery import Aborted, BatchCommit, TransactionalDelivery, rewind_points
from pipeline.worker.messages import DedupEntry, Outbound, Record

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Scored:
    """One scored batch of this lane's partitions, waiting for its transaction."""

    records: list[Record]
    messages: list[Outbound]
    answers: list[Outbound]
    entries: list[DedupEntry]


class Lane:
    def __init__(self, settings: Settings, requests_topic: str, index: int, group_metadata: Callable[[], Any]) -> None:
        self.index = index
        self.delivery = TransactionalDelivery(settings, requests_topic, lane=index)
        self._group_metadata = group_metadata
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
        self.on_entries_committed: Callable[[list[DedupEntry], dict[int, int]], None] | None = None
        # Told of each aborted transaction.
        self.on_aborted: Callable[[], None] | None = None

    def add(
        self,
        records: list[Record],
        messages: list[Outbound],
        answers: Sequence[Outbound] = (),
        entries: Sequence[DedupEntry] = (),
    ) -> None:
        """Scored records of this lane's partitions, the messages they produced, the answers to send
        once those commit and their dedup entries. Records of a partition waiting to be rewound are
        dropped: they are fetched and scored again."""
        if self.rewind_to:
            records = [r for r in records if r.partition() not in self.rewind_to]
            messages = [m for m in messages if m.source_partition not in self.rewind_to]
            answers = [a for a in answers if a.source_partition not in self.rewind_to]
            entries = [e for e in entries if e.partition not in self.rewind_to]
            if not records:
                return
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(_Scored(records, messages, list(answers), list(entries)))

    def state(self) -> LaneState:
        inflight = self.inflight
        return LaneState(
            committing=inflight is not None and not inflight.done(),
            finished=inflight is not None and inflight.done(),
            pending=len(self._pending),
            pending_since=self._pending_since,
            rewinding=bool(self.rewind_to),
        )

    def start_commit(self) -> None:
        """Publish every batch scored so far in one transaction, while the loop goes on."""
        if self.inflight is not None or not self._pending or self.rewind_to:
            return
        messages: list[Outbound] = []
        answers: list[Outbound] = []
        entries: list[DedupEntry] = []
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

    async def _commit(self, commit: BatchCommit, answers: list[Outbound], entries: list[DedupEntry]) -> bool:
        # Traced, the transaction is a span linked to the spans of the events it commits.
        events = tracing.message_links(m.headers for m in commit.messages) if tracing.ENABLED else []
        try:
            with metrics.STAGE_SECONDS.labels("produce").time(), tracing.span("commit transaction", links=events):
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
        the aborted dedup entries): note where each partition must restart (delivery, step 5)."""
        task = self.inflight
        if task is None:
            return
        committed = await task
        if self.inflight is not task:  # settled meanwhile by the other caller (loop or revocation)
            return
        first, self.inflight, self._inflight_first = self._inflight_first, None, {}
        if committed:
            return
        scored_since = [record for scored in self._pending for record in scored.records]
        self._pending = []
        self.rewind_to = rewind_points(self.rewind_to, first, scored_since)

    async def flush(self) -> None:
        """Commit everything scored (before its partitions are revoked)."""
        await self.settle()
        self.start_commit()
        await self.settle()


class Lanes:
    """Every lane of a worker: routing by input partition, their states for the batching decisions,
    their transactions started and settled, the rewinds their aborts ask for, the flush on stop."""

    def __init__(self, settings: Settings, requests_topic: str, group_metadata: Callable[[], Any]) -> None:
        count = settings.worker.transaction_lanes
        self._lanes = [Lane(settings, requests_topic, i, group_metadata) for i in range(count)]

    def __len__(self) -> int:
        return len(self._lanes)

    def lane(self, partition: int) -> Lane:
        return self._lanes[partition % len(self._lanes)]

    def listen(
        self,
        committed: Callable[[list[Outbound]], None] | None = None,
        entries_committed: Callable[[list[DedupEntry], dict[int, int]], None] | None = None,
        aborted: Callable[[], None] | None = None,
    ) -> None:
        """Callbacks for every lane (see `Lane`); those given replace the lanes' own."""
        for lane in self._lanes:
            lane.on_committed = committed or lane.on_committed
            lane.on_entries_committed = entries_committed or lane.on_entries_committed
            lane.on_aborted = aborted or lane.on_aborted

    async def open(self) -> None:
        await asyncio.gather(*(lane.delivery.open() for lane in self._lanes))

    async def close(self) -> None:
        await asyncio.gather(*(lane.delivery.close() for lane in self._lanes))

    def add(
        self,
        records: list[Record],
        messages: list[Outbound],
        entries: list[DedupEntry],
        after: Sequence[Outbound] = (),
    ) -> None:
        """A scored batch, each part to the lane of its input partition; `after`: answers to send
        once the transaction carrying them commits."""
        if len(self._lanes) == 1:
            self._lanes[0].add(records, messages, after, entries)
            return
        count = len(self._lanes)
        by_lane: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_lane[record.partition() % count].append(record)
        routed = [_by_lane(messages, count), _by_lane(after, count)]
        remembered: dict[int, list[DedupEntry]] = defaultdict(list)
        for entry in entries:
            remembered[entry.partition % count].append(entry)
        for index, lane_records in by_lane.items():
            self._lanes[index].add(lane_records, routed[0][index], routed[1][index], remembered[index])

    def states(self) -> list[LaneState]:
        return [lane.state() for lane in self._lanes]

    def commit(self, indices: Iterable[int]) -> None:
        for index in indices:
            self._lanes[index].start_commit()

    async def settle(self, indices: Iterable[int]) -> None:
        for index in indices:
            await self._lanes[index].settle()

    def in_flight(self) -> list[asyncio.Task[bool]]:
        return [lane.inflight for lane in self._lanes if lane.inflight is not None]

    def take_rewinds(self) -> dict[int, int]:
        """Where each partition of the aborted lanes must restart; the lanes go on afterwards."""
        rewind: dict[int, int] = {}
        for lane in self._lanes:
            rewind.update(lane.rewind_to)
            lane.rewind_to = {}
        return rewind

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: not to be rewound by us any more."""
        for partition in partitions:
            self.lane(partition).rewind_to.pop(partition, None)

    async def flush(self) -> None:
        """Commit everything scored (before partitions are revoked)."""
        await asyncio.gather(*(lane.flush() for lane in self._lanes))


def _by_lane(messages: Iterable[Outbound], count: int) -> dict[int, list[Outbound]]:
    routed: dict[int, list[Outbound]] = defaultdict(list)
    for message in messages:
        routed[message.source_partition % count].append(message)
    return routed
