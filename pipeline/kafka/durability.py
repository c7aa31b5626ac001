"""Whether the topics a process writes keep what it writes through a broker's loss: checked at start
against `kafka.min_replication_factor` (docs/security.md#durability-checked-at-start).

Every producer of the pipeline writes with acks=all, which waits for the in-sync replicas, and no
fewer than `min.insync.replicas` of them. A topic with fewer replicas than the operator's minimum,
or where one in-sync replica is enough, acknowledges a record that one broker's disk alone holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Replication:
    """One topic's replication as the cluster has it."""

    topic: str
    replicas: int  # the fewest of any of its partitions
    min_insync: int | None  # min.insync.replicas (None: not known to this principal)


def findings(topics: Iterable[Replication], minimum: int) -> tuple[list[str], list[str]]:
    """Pure: (refusals, warnings). With a production minimum (2 or more), a topic below it, or whose
    `min.insync.replicas` is 1, is refused; with the development default (1), a replicated topic
    whose `min.insync.replicas` is 1 is a warning."""
    refusals: list[str] = []
    warnings: list[str] = []
    for t in topics:
        if t.replicas < minimum:
            refusals.append(f"{t.topic} has {t.replicas} replica(s), fewer than kafka.min_replication_factor {minimum}")
        elif t.min_insync is not None and t.min_insync < 2 <= t.replicas:
            why = f"{t.topic} has min.insync.replicas {t.min_insync}: acks=all is then acknowledged by one replica"
            (refusals if minimum >= 2 else warnings).append(why)
    return refusals, warnings


def check(settings: Settings, topics: Iterable[str], timeout_s: float = 15.0, admin: AdminClient | None = None) -> None:
    """Raises `ConfigurationError` with the refusals in one line; logs the warnings (asked through
    `admin`, default a client of its own)."""
    names = sorted(set(topics))
    if not names:
        return
    admin = admin or clients.admin(settings, clients.QUIET)
    metadata = admin.list_topics(timeout=timeout_s).topics
    found = {n: metadata[n] for n in names if n in metadata and metadata[n].error is None and metadata[n].partitions}
    if not found:
        return
    configs = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in found], request_timeout=timeout_s)
    insync: dict[str, int | None] = {}
    for resource, future in configs.items():
        try:
            entry = future.result().get("min.insync.replicas")
        except KafkaException:  # not allowed DESCRIBE_CONFIGS on it: only its replicas are checked
            entry = None
        insync[resource.name] = int(entry.value) if entry is not None and entry.value is not None else None
    replication = [
        Replication(n, min(len(p.replicas) for p in t.partitions.values()), insync.get(n)) for n, t in found.items()
    ]
    refusals, warnings = findings(replication, settings.kafka.min_replication_factor)
    for warning in warnings:
        log.warning("kafka_durability", topic=warning.split(" ", 1)[0], reason=warning)
    if refusals:
        raise ConfigurationError(
            f"kafka at {settings.kafka.bootstrap_servers}: {'; '.join(refusals)}: a broker's loss could lose "
            "acknowledged records (docs/security.md#durability-checked-at-start)"
        )
