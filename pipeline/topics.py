"""`pipeline topics apply`: create the contract's topics from topics/topics.yaml, idempotently."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic, OffsetSpec

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApplyReport:
    created: list[str]
    grown: list[str]
    unchanged: list[str]


def load_specs(settings: Settings, path: Path | None = None) -> list[TopicSpec]:
    raw = yaml.safe_load((path or settings.topics.definitions).read_text())
    names = settings.topics.model_dump()
    specs = []
    for role, spec in raw.items():
        if role not in names:
            raise ConfigurationError(f"topics.yaml: unknown topic role {role!r}")
        config = {k: str(v) for k, v in (spec.get("config") or {}).items()}
        specs.append(TopicSpec(names[role], int(spec["partitions"]), config))
    return specs


def admin_client(settings: Settings) -> AdminClient:
    """An admin client whose failures reach the caller as errors (one line at the command line), not
    as librdkafka's own log lines besides."""
    return clients.admin(settings, clients.QUIET)


def requests_producer(settings: Settings, options: dict[str, Any] | None = None) -> Producer:
    """A librdkafka producer for the requests topic, placing keys as every producer of it must
    (contract.REQUESTS_PARTITIONER); `options` are further client settings."""
    return clients.requests_producer(settings, options)


def apply(settings: Settings, specs: list[TopicSpec] | None = None, timeout_s: float = 30.0) -> ApplyReport:
    specs = specs if specs is not None else load_specs(settings)
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [s for s in specs if s.name not in existing]
    grow = [s for s in specs if s.name in existing and len(existing[s.name].partitions) < s.partitions]
    if missing:
        new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config) for s in missing]
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                _wait(admin.create_topics(new, operation_timeout=timeout_s), ignore="TOPIC_ALREADY_EXISTS")
                break
            except KafkaException as e:  # a request lost on its way: created again, or found created
                if e.args[0].code() not in _IN_TRANSIT or attempt == _CREATE_ATTEMPTS - 1:
                    raise ConfigurationError(f"creating topics: {e.args[0].str()}") from e
    if grow:
        _wait(admin.create_partitions([NewPartitions(s.name, s.partitions) for s in grow]))
    if missing or grow:
        _await_leaders(admin, {s.name: s.partitions for s in missing + grow}, timeout_s)
    changed = {s.name for s in missing + grow}
    return ApplyReport(
        created=[s.name for s in missing],
        grown=[s.name for s in grow],
        unchanged=[s.name for s in specs if s.name not in changed],
    )


def partition_count(settings: Settings, topic: str, timeout_s: float = 30.0) -> int:
    metadata = admin_client(settings).list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ConfigurationError(f"topic {topic!r} does not exist: run `pipeline topics apply`")
    return len(metadata.partitions)


def topic_config(settings: Settings, topic: str, timeout_s: float = 30.0) -> dict[str, str]:
    """The topic's effective configuration (its own settings over the broker's defaults)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = admin_client(settings)  # held until the answer is in: a dropped client cancels its requests
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result()
    except KafkaException as e:
        raise ConfigurationError(f"could not read the configuration of topic {topic!r}: {e}") from e
    return {name: entry.value for name, entry in entries.items() if entry.value is not None}


def _await_leaders(admin: AdminClient, wanted: dict[str, int], timeout_s: float) -> None:
    """New partitions (`wanted`: each topic's count) are usable once their leader serves them. The
    metadata can name a leader before then, and records acknowledged that early have been missing
    from the log (docs/architecture.md#new-topics-and-partitions): so each partition's leader is
    asked for its end offset until every one answers."""
    deadline = time.monotonic() + timeout_s
    pending = [TopicPartition(name, p) for name, count in wanted.items() for p in range(count)]
    errors: dict[TopicPartition, str] = {}
    leaderless = sorted(wanted)
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        except KafkaException as e:
            raise ConfigurationError(f"the broker's metadata could not be read: {e}") from e
        leaderless = [
            name
            for name, count in sorted(wanted.items())
            if name not in metadata
            or len(metadata[name].partitions) < count
            or any(p.leader < 0 for p in metadata[name].partitions.values())
        ]
        if not leaderless:
            errors = _unserved(admin, pending, max(0.1, deadline - time.monotonic()))
            if not errors:
                return
            pending = list(errors)
        time.sleep(0.1)
    if not errors:
        raise ConfigurationError(f"topics {leaderless} have no leader for every partition after {timeout_s:g} s")
    unserved = ", ".join(f"{tp.topic}[{tp.partition}]: {error}" for tp, error in list(errors.items())[:3])
    raise ConfigurationError(f"{len(errors)} new partition(s) not served after {timeout_s:g} s: {unserved}")


def _unserved(admin: AdminClient, partitions: list[TopicPartition], timeout_s: float) -> dict[TopicPartition, str]:
    """The partitions whose leader does not yet answer for their end offset, with its error. One
    that can never be asked (not authorized, not supported) ends the wait at once."""
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout_s)
    unserved = {}
    for tp, future in futures.items():
        try:
            future.result()
        except KafkaException as e:
            error = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if error is not None and error.code() in _NEVER_SERVED:
                raise ConfigurationError(f"{tp.topic}[{tp.partition}]: {error.str()}") from e
            unserved[tp] = error.str() if error is not None else str(e)
    return unserved


_NEVER_SERVED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.UNSUPPORTED_VERSION,
    KafkaError._UNSUPPORTED_FEATURE,
}


# A request that failed on its way, not refused: a fresh client's first requests can go out on its
# bootstrap connections, which librdkafka drops once it knows the brokers (_DESTROY_BROKER).
_IN_TRANSIT = {KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}
_CREATE_ATTEMPTS = 3


def _wait(futures: dict, ignore: str | None = None) -> None:
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as e:
            if ignore and e.args[0].name() == ignore:
                continue
            if e.args[0].code() in _IN_TRANSIT:
                raise  # the caller may ask again
            raise ConfigurationError(f"topic {name}: {e.args[0].str()}") from e
