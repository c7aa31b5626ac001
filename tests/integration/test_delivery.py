"""Transactional delivery on the real broker: one batch is all or nothing, its offsets included, and a
worker holding a stale group generation (a zombie) cannot commit anything."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.worker.delivery import Aborted, BatchCommit, TransactionalDelivery
from pipeline.worker.messages import Outbound
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

PARTITIONS = 12


def _member(settings, group: str) -> Consumer:
    """A consumer that has joined `group` on the requests topic (it holds a generation)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.topics.requests])
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never joined its group"
        consumer.poll(0.2)
    return consumer


def _committed_values(settings, topic: str) -> list[bytes]:
    """Everything a read_committed reader sees on `topic`."""
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    values, idle_since = [], time.monotonic()
    while time.monotonic() - idle_since < 3:
        for message in reader.consume(1000, 0.2):
            if message.error() is None:
                values.append(message.value())
                idle_since = time.monotonic()
    reader.close()
    return values


def _batch(settings, count: int, offsets: dict[int, int], metadata) -> BatchCommit:
    results = settings.topics.results
    return BatchCommit(
        messages=[
            Outbound(i % PARTITIONS, results, f"e{i}".encode(), b"r%d" % i, i % PARTITIONS) for i in range(count)
        ],
        offsets=offsets,
        group_metadata=metadata,
    )


def _deliver(settings, batch: BatchCommit) -> None:
    async def run() -> None:
        delivery = TransactionalDelivery(settings, settings.topics.requests)
        await delivery.open()
        try:
            await delivery.commit(batch)
        finally:
            await delivery.close()

    asyncio.run(run())


def test_a_batch_larger_than_the_producer_queue_is_committed_whole_with_its_offsets(stack):
    # A local queue of 50 messages makes the producer refuse most of the 600 until it has drained.
    settings = make_settings(stack).updated(kafka={"extra": {"queue.buffering.max.messages": 50}})
    member = _member(settings, settings.worker.app_id)

    _deliver(settings, _batch(settings, 300, {0: 42, 5: 7}, member.consumer_group_metadata()))

    assert sorted(_committed_values(settings, settings.topics.results)) == sorted(b"r%d" % i for i in range(300))
    committed = member.committed([TopicPartition(settings.topics.requests, p) for p in (0, 5)], timeout=10)
    assert [tp.offset for tp in committed] == [42, 7]
    member.close()


def test_a_zombie_with_a_stale_generation_commits_nothing(stack):
    settings = make_settings(stack)
    zombie = _member(settings, settings.worker.app_id)
    stale = zombie.consumer_group_metadata()
    zombie.close()  # it leaves; another member takes the partitions: a new generation
    successor = _member(settings, settings.worker.app_id)

    # Refused by the group coordinator for its stale membership, not for any other reason.
    with pytest.raises(Aborted, match=r"UNKNOWN_MEMBER_ID|ILLEGAL_GENERATION"):
        _deliver(settings, _batch(settings, 20, {0: 99}, stale))

    assert _committed_values(settings, settings.topics.results) == []
    committed = successor.committed([TopicPartition(settings.topics.requests, 0)], timeout=10)
    assert committed[0].offset < 0, "no offset was committed for the zombie"
    successor.close()
