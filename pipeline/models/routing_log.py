"""The routing topic: every model's routing changes, in order, on one partition. The history is the
state: each reader folds it (`routing.fold`), so the CLI, every worker and the guard agree without
another service.

`read` reads it to its end once (the CLI); `append` adds a change; `RoutingFollower` keeps a worker's
routings current, a background thread applying each change as it arrives.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import READERS
from pipeline.kafka.offsets import watermarks
from pipeline.models.routing import Change, Routing, RoutingRefused, decode, encode
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

_PARTITION = 0


@dataclass
class History:
    """The changes read so far, by model, and each model's routing after them."""

    changes: dict[str, list[Change]] = field(default_factory=lambda: defaultdict(list))
    routings: dict[str, Routing] = field(default_factory=dict)
    skipped: dict[str, list[tuple[Change, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, change: Change) -> None:
        routing = self.routings.get(change.model, Routing(change.model))
        self.changes[change.model].append(change)
        try:
            self.routings[change.model] = routing.apply(change)
        except RoutingRefused as e:  # every reader skips the same change: all agree
            self.skipped[change.model].append((change, str(e)))

    def routing(self, model: str) -> Routing:
        return self.routings.get(model, Routing(model))


def _decoded(message: Message) -> Change | None:
    value = message.value()
    if value is None:
        return None
    try:
        return decode(value)
    except RoutingRefused as e:
        log.warning("routing_record_skipped", offset=message.offset(), reason=str(e))
        return None


def _topic_end(consumer: Consumer, topic: str, timeout_s: float) -> int:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise ConfigurationError(f"topic {topic!r} does not exist: run `pipeline topics apply`")
        return watermarks(consumer, TopicPartition(topic, _PARTITION), timeout_s)[1]
    except KafkaException as e:
        raise ConfigurationError(f"{topic}: the broker could not be asked for its end ({e})") from e


def read(settings: Settings, timeout_s: float = 30.0) -> History:
    """Every change on the routing topic, to its end."""
    topic = settings.topics.model_routing
    consumer = clients.reader(settings, READERS["models"], clients.QUIET)
    history = History()
    try:
        end = _topic_end(consumer, topic, timeout_s)
        if end == 0:
            return history
        consumer.assign([TopicPartition(topic, _PARTITION, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        position = 0
        while position < end:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{topic} could not be read to its end within {timeout_s:g} s")
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is not None:
                    continue
                position = (message.offset() or 0) + 1
                if (change := _decoded(message)) is not None:
                    history.add(change)
        return history
    finally:
        consumer.close()


def append(settings: Settings, change: Change, timeout_s: float = 30.0) -> None:
    """Write one change (acknowledged by every in-sync replica before this returns)."""
    producer = clients.producer(settings, {"enable.idempotence": True, "acks": "all", **clients.QUIET})
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    producer.produce(settings.topics.model_routing, encode(change), change.model.encode(), _PARTITION, delivered)
    if producer.flush(timeout_s) or failures:
        reason = failures[0] if failures else f"not acknowledged within {timeout_s:g} s"
        raise ConfigurationError(
            f"the routing change could not be written to {settings.topics.model_routing}: {reason}"
        )


class RoutingFollower:
    """Every model's routing, kept current from the routing topic by a thread of its own. `routings()`
    is a snapshot: a batch routed under it is routed under one routing even if a change arrives."""

    def __init__(self, settings: Settings, group: str | None = None) -> None:
        """`group`: the Kafka group its reader names (default: the worker's, `<app_id>-routing`)."""
        self._topic = settings.topics.model_routing
        group = group or f"{settings.worker.app_id}-routing"
        self._consumer = clients.reader(settings, group, clients.QUIET)
        self._history = History()
        self._snapshot: Mapping[str, Routing] = {}
        self._caught_up = threading.Event()
        self._stopping = threading.Event()
        self._end = _topic_end(self._consumer, self._topic, settings.models.routing_wait_s)
        self._consumer.assign([TopicPartition(self._topic, _PARTITION, OFFSET_BEGINNING)])
        if self._end == 0:
            self._caught_up.set()
        self._thread = threading.Thread(target=self._follow, name="routing-follower", daemon=True)
        self._thread.start()

    def routings(self) -> Mapping[str, Routing]:
        return self._snapshot

    def wait_caught_up(self, timeout_s: float) -> None:
        """Until the changes written before this follower started are applied."""
        if not self._caught_up.wait(timeout_s):
            raise ConfigurationError(f"{self._topic} could not be read to its end within {timeout_s:g} s")

    def _follow(self) -> None:
        while not self._stopping.is_set():
            try:
                messages = self._consumer.consume(num_messages=500, timeout=0.2)
            except KafkaException as e:  # the consumer retries by itself; say so, and go on
                log.warning("routing_read_failed", error=str(e))
                continue
            changed = False
            for message in messages:
                if message.error() is not None:
                    continue
                if (change := _decoded(message)) is not None:
                    self._history.add(change)
                    changed = True
                if (message.offset() or 0) + 1 >= self._end:
                    self._caught_up.set()
            if changed:
                self._snapshot = dict(self._history.routings)
                log.info("routing_applied", routings={m: describe_routing(r) for m, r in self._snapshot.items()})

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def describe_routing(routing: Routing) -> str:
    if routing.candidate is None:
        return f"stable {routing.stable or '(served)'}"
    return (
        f"stable {routing.stable}, candidate {routing.candidate} "
        f"(canary {routing.canary_share:.1%}, shadow {routing.shadow_share:.1%})"
    )
