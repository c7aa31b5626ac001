"""Kafka clients, each built from the settings' connection block (`connection.py`) and the options of
its use: the only constructors of Kafka clients in the package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import confluent_kafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.admin import AdminClient

from pipeline.contract import REQUESTS_PARTITIONER
from pipeline.kafka import connection
from pipeline.settings import Settings

if TYPE_CHECKING:
    import faust


def config(settings: Settings, **options: Any) -> dict[str, Any]:
    """librdkafka properties of a client: the connection, then `options` (the connection's `extra`
    last, so an operator's override wins)."""
    base = connection.librdkafka(settings.kafka)
    return base | options | settings.kafka.extra


def consumer(settings: Settings, **options: Any) -> confluent_kafka.Consumer:
    return confluent_kafka.Consumer(config(settings, **options))


def producer(settings: Settings, **options: Any) -> confluent_kafka.Producer:
    return confluent_kafka.Producer(config(settings, **options))


def admin(settings: Settings, **options: Any) -> AdminClient:
    return AdminClient(config(settings, **options))


def reader(settings: Settings, group: str, **options: Any) -> confluent_kafka.Consumer:
    """A read_committed consumer that is only ever assigned partitions: it never joins its group nor
    commits."""
    defaults = {"group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed"}
    return consumer(settings, **(defaults | options))


def requests_producer(settings: Settings, **options: Any) -> confluent_kafka.Producer:
    """A producer for the requests topic, placing keys as every producer of it must
    (`contract.REQUESTS_PARTITIONER`)."""
    return producer(settings, **options, **REQUESTS_PARTITIONER)


def aio_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **connection.aiokafka(settings.kafka), **options)


def aio_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**connection.aiokafka(settings.kafka), **options)


def faust_app(settings: Settings, app_id: str, **options: Any) -> faust.App:
    """A Faust app connected as the settings say; `options` are its other settings."""
    import faust

    return faust.App(app_id, **connection.faust(settings.kafka), **options)
