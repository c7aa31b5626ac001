"""Reply correlation: a future per correlation id, resolved by this instance's reply consumer.

Each bridge instance claims one partition of the replies topic (its reply address) through the
gateway consumer group (see `reply_assignor`) and reads only that partition, from the moment it
claimed it, so it sees only answers to its own requests. The claim survives rebalances caused by
other instances joining or leaving; reading resumes where it stopped, so no reply is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from pipeline import metrics
from pipeline.contract import CORRELATION_ID, REPLY_KIND
from pipeline.gateway.reply_assignor import ReplyPartitionAssignor
from pipeline.kafka import clients
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Reply:
    kind: str  # "result" or "dead_letter"
    value: bytes


class ReplyRouter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._partition: TopicPartition | None = None
        self._next_offset: int | None = None  # where reading resumes if the claim survives a rebalance
        self._claimed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = False

    @property
    def address(self) -> str | None:
        return None if self._partition is None else f"{self._partition.topic}:{self._partition.partition}"

    async def start(self) -> None:
        gateway = self._settings.gateway
        topic = self._settings.topics.replies
        self._consumer = clients.aio_consumer(
            self._settings,
            client_id=f"{self._settings.kafka.client_id}-gateway-replies",
            group_id=gateway.reply_group or f"{topic}.gateways",
            enable_auto_commit=False,
            isolation_level="read_committed",
            partition_assignment_strategy=(ReplyPartitionAssignor(topic),),
            session_timeout_ms=gateway.reply_session_timeout_ms,
            heartbeat_interval_ms=max(100, gateway.reply_session_timeout_ms // 10),
        )
        metrics.GATEWAY_PENDING.set_function(lambda: len(self._pending))
        await self._consumer.start()
        self._consumer.subscribe([topic], listener=_Claim(self))
        self._task = asyncio.create_task(self._run(), name="reply-router")
        try:  # the group assigns on the first poll; wait for it so start-up logs a real address
            await asyncio.wait_for(self._claimed.wait(), timeout=gateway.reply_claim_timeout_s)
        except TimeoutError:
            log.error("reply_partition_unclaimed", reason="no answer from the gateway group in time")

    async def stop(self) -> None:
        self.ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()  # leaves the group at once, so the partition is free for another instance
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def claimed(self, assigned: set[TopicPartition]) -> None:
        home = sorted(tp for tp in assigned if tp.topic == self._settings.topics.replies)
        if not home:
            self.ready = False
            log.error("reply_partition_unclaimed", reason="every replies partition is owned by another gateway")
        elif home[0] == self._partition and self._next_offset is not None:
            self._consumer.seek(home[0], self._next_offset)
            self.ready = True
        else:
            if self._partition is not None:
                # Requests still waiting on the old address will time out (504) rather than hang.
                log.warning("reply_partition_moved", old=self.address, pending=len(self._pending))
            await self._consumer.seek_to_end(home[0])
            self._next_offset = await self._consumer.position(home[0])
            self._partition = home[0]
            self.ready = True
            log.info("reply_partition_claimed", reply_address=self.address)
        self._claimed.set()

    def expect(self, correlation_id: str) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        self._pending.pop(correlation_id, None)

    async def _run(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as e:
                log.warning("reply_consumer_error", error=str(e))
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                for record in records:
                    headers = dict(record.headers or ())
                    correlation = headers.get(CORRELATION_ID)
                    if correlation is not None and record.value is not None:
                        kind = headers.get(REPLY_KIND, b"result").decode()
                        self.resolve(correlation.decode(), Reply(kind, record.value), route="topic")
                if records and tp == self._partition:
                    self._next_offset = records[-1].offset + 1

    def resolve(self, correlation_id: str, reply: Reply, route: str) -> None:
        """Hand a caller its answer, from the replies topic or straight from a worker (`route`).
        An answer for a request that already timed out, or was already answered, is dropped."""
        metrics.GATEWAY_ANSWERS.labels(route).inc()
        future = self._pending.pop(correlation_id, None)
        if future is not None and not future.done():
            future.set_result(reply)


class _Claim(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, router: ReplyRouter) -> None:
        self.router = router

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass  # keep the address: the sticky assignor gives the same partition back

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.router.claimed(assigned)
