"""A partition's low and high watermarks, asked again while its leadership moves or is not taken up
yet: during a leader election, or just after the partition was created, the broker answers
NOT_LEADER_FOR_PARTITION (and the like) until clients learn the leader, which librdkafka's
watermark query does not retry on its own."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

# The errors of a partition between leaders, or new: a later metadata refresh finds its leader.
# Errors librdkafka flags retriable are asked again too.
_NOT_READY = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
}


def watermarks(consumer: Consumer, partition: TopicPartition, timeout_s: float = 10.0) -> tuple[int, int]:
    """(low, high) of `partition`, within `timeout_s` however many leader changes it takes; a
    KafkaException for any other error, or once the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(0.1, deadline - time.monotonic())
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=left, cached=False)
            return int(low), int(high)
        except KafkaException as e:
            error = e.args[0]
            if (error.code() not in _NOT_READY and not error.retriable()) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
