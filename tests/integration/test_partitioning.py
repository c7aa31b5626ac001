"""Every producer of the requests topic puts a key on the same partition as Java's default
partitioner: a repeat of an event is deduplicated only by the worker owning its partition.

The reference is the Java producer itself: `KafkaPartitionOracle.java`, run on the broker's own
kafka-clients jar, computes each key's partition with `BuiltInPartitioner.partitionForKey` (what
KafkaProducer uses for a keyed record). Kafka's own murmur2 test vectors check that oracle."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.gateway.bridge import request_producer
from pipeline.local import probe
from pipeline.local.traffic import Message

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ORACLE = Path(__file__).with_name("KafkaPartitionOracle.java")
KAFKA_JARS = ROOT / "deploy" / "kafka" / ".libs"
# Account ids (the contract's keys: 1 to 3 bytes), and keys that reach murmur2's 4-byte blocks, an
# exact multiple of them, a composite entity key and multi-byte UTF-8.
KEYS = [str(account).encode() for account in range(1, 301)] + [
    b"1000",
    b"12345678",
    b"9999999999",
    b"account_id=7|region=eu",
    "k\u00e9y-\u00fc\u4e2d".encode(),
]
# Kafka's own test vectors for Utils.murmur2 (clients/src/test/.../common/utils/UtilsTest.java, testMurmur2).
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _java_partitions(keys: list[bytes], partitions: int) -> dict[bytes, tuple[int, int]]:
    """(murmur2 hash, partition) of each key, as the Java producer of the broker's jars computes them."""
    java = shutil.which("java")
    assert java is not None and any(KAFKA_JARS.glob("kafka-clients-*.jar")), "the broker's JDK and jars"
    out = subprocess.run(
        [java, "-cp", f"{KAFKA_JARS}/*", str(ORACLE), str(partitions), *(key.hex() for key in keys)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    return {bytes.fromhex(key): (int(hash_), int(partition)) for key, hash_, partition in rows}


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
    java = _java_partitions([*MURMUR2_VECTORS, *KEYS], 12)
    assert {key: java[key][0] for key in MURMUR2_VECTORS} == MURMUR2_VECTORS, "the oracle runs Kafka's murmur2"
    assert len(seen) == 2 * len(KEYS)
    assert {key: seen[(b"probe", key)] for key in KEYS} == {key: java[key][1] for key in KEYS}
    assert {key: seen[(b"bridge", key)] for key in KEYS} == {key: java[key][1] for key in KEYS}
    assert len({seen[(b"probe", key)] for key in KEYS}) == 12  # spread over every partition
