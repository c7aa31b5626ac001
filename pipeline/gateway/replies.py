"""Reply correlation: a future per correlation id, resolved by this instance's reply consumer.

Each bridge instance owns one partition of the replies topic (its reply address) and reads only
that partition, from its end, so it sees only answers to its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.contract import CORRELATION_ID, REPLY_KIND
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Reply:
    kind: str  # "result" or "dead_letter"
    value: bytes


class ReplyRouter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._partition = TopicPartition(settings.topics.replies, settings.gateway.reply_partition)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = False

    @property
    def address(self) -> str:
        return f"{self._partition.topic}:{self._partition.partition}"

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka.bootstrap_servers,
            client_id=f"{self._settings.kafka.client_id}-gateway-replies",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_end(self._partition)
        await self._consumer.position(self._partition)  # positioned: replies from now on are seen
        self._task = asyncio.create_task(self._run(), name="reply-router")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

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
            for records in batches.values():
                for record in records:
                    self._resolve(dict(record.headers or ()), record.value)

    def _resolve(self, headers: dict[str, bytes], value: bytes | None) -> None:
        correlation = headers.get(CORRELATION_ID)
        if correlation is None or value is None:
            return
        # A reply for a request that already timed out finds no future and is dropped.
        future = self._pending.pop(correlation.decode(), None)
        if future is not None and not future.done():
            future.set_result(Reply(headers.get(REPLY_KIND, b"result").decode(), value))
