"""The Kafka clients of the replay commands: one configuration for all of them."""

from __future__ import annotations

from typing import Any

from pipeline.settings import Settings


def client_config(settings: Settings, **options: Any) -> dict[str, Any]:
    """librdkafka settings for a command's client. A broker problem reaches the user as one line
    (`ConfigurationError`), so librdkafka's own error log lines, which would repeat it every
    second, are left out (log level 2: critical only)."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, "log_level": 2, **options, **settings.kafka.extra}


def reader_config(settings: Settings, group: str) -> dict[str, Any]:
    """A read_committed consumer that is only ever assigned partitions: it never joins its group
    nor commits."""
    return client_config(
        settings, **{"group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed"}
    )
