"""A consumer group's lag on a topic, per partition, in records that are work.

Lag is the last stable offset (the end a `read_committed` reader sees: no open transaction's
records, and a transaction's commit marker counted as read once the records before it are) less the
group's committed offset. Against the high watermark instead, every transactional partition would
show one record of lag for ever, its last commit marker (kedacore/keda#5675). A partition with no
committed offset lags from its first offset. A lag that cannot be read is an error, never zero.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from pipeline.errors import PipelineError


class LagUnreadable(PipelineError):
    """The broker did not answer for the group's offsets or the topic's ends."""

    code = "lag_unreadable"
    retriable = True


def records_lag(
    admin: AdminClient, group: str, topic: str, partitions: Iterable[int], timeout_s: float = 5.0
) -> dict[int, int]:
    """Each partition's lag in records (see the module)."""
    tps = [TopicPartition(topic, p) for p in partitions]
    try:
        request = [ConsumerGroupTopicPartitions(group, tps)]
        committed = admin.list_consumer_group_offsets(request, request_timeout=timeout_s)[group].result(timeout_s)
        ends = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in tps},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=timeout_s,
        )
        firsts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout_s)
        stable = {tp.partition: future.result(timeout_s).offset for tp, future in ends.items()}
        start = {tp.partition: future.result(timeout_s).offset for tp, future in firsts.items()}
    except KafkaException as e:
        raise LagUnreadable(f"lag of {group} on {topic} could not be read: {e}") from e
    except TimeoutError as e:
        raise LagUnreadable(f"lag of {group} on {topic}: no answer within {timeout_s:g} s") from e
    offsets = {tp.partition: tp.offset for tp in committed.topic_partitions}
    return {p: lag(stable[p], offsets.get(p, -1), start[p]) for p in stable}


def lag(last_stable: int, committed: int, first: int) -> int:
    """Pure: records from the committed offset (or the partition's first, without one) to the end."""
    position = committed if committed >= 0 else first
    return max(0, last_stable - max(position, first))
