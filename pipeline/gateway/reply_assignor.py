"""Each bridge instance claims one partition of the replies topic through a Kafka consumer group.

The group is used as a lease, not for load sharing: every member gets exactly one "home" partition
(its reply address) and keeps it across rebalances, because a partition that moved would carry the
replies of requests still waiting on the old owner. Members advertise their current home in the
join metadata; the group leader keeps every valid claim and hands free partitions to newcomers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

NO_HOME = -1


def assign_homes(claims: Mapping[str, int], partitions: Iterable[int]) -> dict[str, int]:
    """One partition per member: keep valid claims (the first member by id wins a contested one),
    give free partitions to the rest in id order; members beyond the partition count get NO_HOME."""
    free = sorted(set(partitions))
    homes: dict[str, int] = {}
    for member in sorted(claims):
        if claims[member] in free:
            homes[member] = claims[member]
            free.remove(claims[member])
    for member in sorted(claims):
        if member not in homes:
            homes[member] = free.pop(0) if free else NO_HOME
    return homes


class ReplyPartitionAssignor(AbstractPartitionAssignor):
    """aiokafka calls these on the instance given in `partition_assignment_strategy`."""

    name = "reply-home"  # type: ignore[assignment]
    version = 0

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.home = NO_HOME

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), struct.pack(">i", self.home))

    def assign(  # type: ignore[override]
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        # A member subscribes to one replies topic; members of one group may name different ones.
        assignments = {member: ConsumerProtocolMemberAssignment(self.version, [], b"") for member in members}
        for topic in sorted({t for meta in members.values() for t in meta.subscription}):
            claims = {m: _claim(meta.user_data) for m, meta in members.items() if topic in meta.subscription}
            for member, home in assign_homes(claims, cluster.partitions_for_topic(topic) or ()).items():
                if home != NO_HOME:
                    assignments[member].assignment.append((topic, [home]))
        return assignments

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        partitions = [tp.partition for tp in assignment.partitions() if tp.topic == self.topic]
        self.home = partitions[0] if partitions else NO_HOME


def _claim(user_data: bytes | None) -> int:
    return struct.unpack(">i", user_data)[0] if user_data and len(user_data) == 4 else NO_HOME
