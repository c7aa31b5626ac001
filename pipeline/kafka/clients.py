"""Kafka clients, each built from the settings' connection block (`connection.py`) and the options of
its use: the only constructors of Kafka clients in the package.

librdkafka's options go in one mapping, by their own dotted names (`{"group.id": ..., "linger.ms": 5}`);
aiokafka's and Faust's as keyword arguments, as those libraries name them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import confluent_kafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.admin import AdminClient

from pipeline.contract import REQUESTS_PARTITIONER
from pipeline.kafka import connection
from pipeline.settings import Settings

if TYPE_CHECKING:
    import faust

# librdkafka properties of one use of a client, by their dotted names.
Options = Mapping[str, Any]

# The command-line clients' (`pipeline replay`, `pipeline models`): a broker problem reaches the user
# as one line (`ConfigurationError`), so librdkafka's own error log lines, which would repeat it every
# second, are left out (log level 2: critical only).
QUIET: Options = {"log_level": 2}

AppT = TypeVar("AppT", bound="faust.App")


def config(settings: Settings, options: Options | None = None) -> dict[str, Any]:
    """librdkafka properties of a client: the connection, then `options` (the connection's `extra`
    last, so an operator's override wins)."""
    return connection.librdkafka(settings.kafka) | dict(options or {}) | settings.kafka.extra


def consumer(settings: Settings, options: Options | None = None) -> confluent_kafka.Consumer:
    return consumer_of(config(settings, options))


def producer(settings: Settings, options: Options | None = None) -> confluent_kafka.Producer:
    return confluent_kafka.Producer(config(settings, options))


def admin(settings: Settings, options: Options | None = None) -> AdminClient:
    return admin_of(config(settings, options))


def reader(settings: Settings, group: str, options: Options | None = None) -> confluent_kafka.Consumer:
    """A read_committed consumer that is only ever assigned partitions: it never joins its group nor
    commits. `options` are further properties (and may change these)."""
    return consumer(settings, reading(group, options))


def reading(group: str, options: Options | None = None) -> dict[str, Any]:
    """A reader's options (see `reader`), then `options`."""
    return {"group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed"} | dict(options or {})


def requests_producer(settings: Settings, options: Options | None = None) -> confluent_kafka.Producer:
    """A producer for the requests topic, placing keys as every producer of it must
    (`contract.REQUESTS_PARTITIONER`, over `options` and `extra` alike)."""
    return confluent_kafka.Producer(config(settings, options) | REQUESTS_PARTITIONER)


def consumer_of(ready: Options) -> confluent_kafka.Consumer:
    """A consumer of properties that `config()` made, with more of a caller's own since (a reader given
    a connection to add its options to)."""
    return confluent_kafka.Consumer(dict(ready))


def admin_of(ready: Options) -> AdminClient:
    """An admin client of properties that `config()` made (one carried to a child process)."""
    return AdminClient(dict(ready))


def aio_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **connection.aiokafka(settings.kafka), **options)


def aio_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**connection.aiokafka(settings.kafka), **options)


def faust_app(settings: Settings, app_id: str, app_type: type[AppT], **options: Any) -> AppT:
    """A Faust app of `app_type` (`faust.App` or a subclass) connected as the settings say; `options`
    are its other settings."""
    return app_type(app_id, **connection.faust(settings.kafka), **options)
