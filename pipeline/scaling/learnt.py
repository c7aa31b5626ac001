"""One worker's rate as the policy learnt it, kept in Kafka so that it survives a restart of
`pipeline scale` (and is shared by every scaler of the group, wherever it runs).

The topic (`topics.scaling_rates`, compacted, one partition) holds one record per workers' group:
the latest measure of one worker's rate, when, at how many workers. A scaler starting reads it back
and decides on it at once, instead of on the configured prior: a learnt rate counts as measured.
A measure is written when it moved by more than `CHANGE` from the last one written, or `EVERY_S`
after it. Where the topic is missing or unreadable the scaler goes on without it, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import structlog
from confluent_kafka import KafkaException, TopicPartition

from pipeline.kafka import clients
from pipeline.kafka.acls import lag_probe_group
from pipeline.kafka.offsets import watermarks
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

CHANGE, EVERY_S = 0.1, 60.0


@dataclass(frozen=True)
class Learnt:
    per_worker_per_s: float
    at: float  # epoch seconds of the measure
    workers: int  # the group's members it was measured with

    def encode(self) -> bytes:
        rate = round(self.per_worker_per_s, 1)
        return orjson.dumps({"per_worker_per_s": rate, "at": self.at, "workers": self.workers})

    @classmethod
    def decode(cls, raw: bytes) -> Learnt:
        value = orjson.loads(raw)
        return cls(float(value["per_worker_per_s"]), float(value["at"]), int(value["workers"]))


def due(last: Learnt | None, now: Learnt) -> bool:
    """Pure: whether a new measure is worth writing (see the module)."""
    if last is None:
        return True
    moved = abs(now.per_worker_per_s - last.per_worker_per_s) > CHANGE * last.per_worker_per_s
    return moved or now.at - last.at >= EVERY_S


class LearntRates:
    """The group's record on the topic: `load()` at the start, `save()` after each measure."""

    def __init__(self, settings: Settings, group: str) -> None:
        self._settings, self._group = settings, group
        self._topic = settings.topics.scaling_rates
        self._producer = clients.producer(settings, {"enable.idempotence": True, "linger.ms": 0})
        self._saved: Learnt | None = None

    def load(self, timeout_s: float = 10.0) -> Learnt | None:
        """The latest record of the group, or None (none written, or the topic unreadable: logged)."""
        consumer = clients.reader(self._settings, lag_probe_group(self._group), clients.QUIET)
        try:
            found = consumer.list_topics(self._topic, timeout=timeout_s).topics.get(self._topic)
            if found is None or found.error is not None:
                log.warning("scaling_rates_unavailable", topic=self._topic, error=str(found and found.error))
                return None
            low, high = watermarks(consumer, TopicPartition(self._topic, 0), timeout_s)
            if high <= low:
                return None
            consumer.assign([TopicPartition(self._topic, 0, low)])
            wanted, last, deadline = self._group.encode(), None, time.monotonic() + timeout_s
            while consumer.position([TopicPartition(self._topic, 0)])[0].offset < high:
                if time.monotonic() > deadline:
                    log.warning("scaling_rates_unavailable", topic=self._topic, error="not read to its end in time")
                    return None
                for message in consumer.consume(1000, 0.5):
                    if message.error() is None and message.key() == wanted and message.value() is not None:
                        last = message.value()
        except KafkaException as e:
            log.warning("scaling_rates_unavailable", topic=self._topic, error=str(e))
            return None
        finally:
            consumer.close()
        self._saved = Learnt.decode(last) if last is not None else None
        return self._saved

    def save(self, learnt: Learnt) -> None:
        """Write the measure if it is due (see the module); a failure is logged, not raised."""
        if not due(self._saved, learnt):
            return
        self._producer.produce(self._topic, learnt.encode(), key=self._group.encode(), on_delivery=self._delivered)
        self._producer.poll(0)
        self._saved = learnt

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            log.warning("scaling_rates_unsaved", topic=self._topic, error=str(error))

    def close(self) -> None:
        self._producer.flush(5)
