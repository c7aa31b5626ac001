"""Every producer of the requests topic puts a key on the same partition as Java's (and aiokafka's)
default partitioner: a repeat of an event is deduplicated only by the worker owning its partition."""

from __future__ import annotations

import time

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition

from pipeline.gateway.bridge import request_producer
from pipeline.local import probe
from pipeline.local.traffic import Message

pytestmark = pytest.mark.integration

KEYS = [str(account).encode() for account in range(1, 301)]


def _partitions_by_key(settings, expected: int) -> dict[tuple[bytes, bytes], int]:
    consumer = Consumer(probe.consumer_config(settings))
    consumer.assign([TopicPartition(settings.topics.requests, p, 0) for p in range(12)])
    seen: dict[tuple[bytes, bytes], int] = {}
    deadline = time.monotonic() + 60
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    seen[(message.value(), message.key())] = message.partition()
    finally:
        consumer.close()
    return seen


async def test_the_bridge_and_the_python_producers_partition_requests_like_java(pipeline_settings):
    settings = pipeline_settings()
    probe.publish(settings, [Message(key, b"probe", None, "valid") for key in KEYS])
    producer = request_producer(settings)
    await producer.start()
    try:
        for key in KEYS:
            await producer.send_and_wait(settings.topics.requests, b"bridge", key=key)
    finally:
        await producer.stop()

    seen = _partitions_by_key(settings, 2 * len(KEYS))
    java = DefaultPartitioner()
    partitions = list(range(12))
    assert len(seen) == 2 * len(KEYS)
    for key in KEYS:
        reference = java(key, partitions, partitions)
        assert seen[(b"probe", key)] == reference
        assert seen[(b"bridge", key)] == reference
    assert len({seen[(b"probe", key)] for key in KEYS}) == 12  # spread over every partition
