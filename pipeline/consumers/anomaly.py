"""The anomaly consumer (`pipeline consumers anomaly`): `anomaly_rules` over the anomaly detector's
results, alerts to `anomaly.alerts`.

Each device's open episode is a row of a Faust table keyed by device, backed by its changelog topic.
Publishing an alert is writing it to a table keyed by `alert_id` whose changelog is `anomaly.alerts`
itself, as the fraud consumer publishes its alerts: the first publication of an alert decided again
(after a crash, or by the consumer a partition moved to) finds it there and is skipped; a follow-up
is the same key written again with its running count, so the compacted topic keeps each alert's
latest state (docs/architecture.md#consumers).
"""

from __future__ import annotations

import time
from typing import Any

import faust
import orjson
import structlog

from pipeline import metrics
from pipeline.consumers.anomaly_rules import Suppression, decide, parse_reading
from pipeline.consumers.app import guarded, published_alerts, results_topic
from pipeline.errors import InvalidRequest
from pipeline.settings import Settings
from pipeline.topics import TopicSpec

log = structlog.get_logger(__name__)


def install(app: faust.App, settings: Settings, partitions: int) -> list[TopicSpec]:
    """The anomaly agent and its tables, on `app`; returns the episodes' changelog topic, to be created
    before the app starts (see `fraud.install`)."""
    anomaly = settings.consumers.anomaly
    rule = Suppression(anomaly.threshold, anomaly.suppress_s, anomaly.follow_up_s)
    results = results_topic(app, settings)
    published = published_alerts(app, "anomaly_alerts", settings.topics.anomaly_alerts, partitions)
    episodes = app.Table("anomaly_episodes", partitions=partitions)

    def handle(event: Any) -> None:
        message = event.message
        try:
            reading = parse_reading(event.value, message.timestamp, message.offset, anomaly.model)
        except InvalidRequest as e:
            metrics.CONSUMED_RESULTS.labels("anomaly", "invalid").inc()
            log.warning("result_unreadable", partition=message.partition, offset=message.offset, error=e.message)
            return
        if reading is None:
            metrics.CONSUMED_RESULTS.labels("anomaly", "other_model").inc()
            return
        metrics.CONSUMED_RESULTS.labels("anomaly", "read").inc()
        device = str(reading.device_id)
        episode, alert = decide(rule, episodes.get(device), reading, time.time())
        if episode is not None:
            episodes[device] = episode
        if alert is None:
            return
        key = alert["alert_id"].encode()
        if alert["follow_up"]["count"] == 0 and key in published:
            metrics.ALERTS_SKIPPED.labels("anomaly").inc()
            return
        published[key] = orjson.dumps(alert)  # the table's changelog is the alerts topic
        metrics.ALERTS.labels("anomaly", "follow_up" if alert["follow_up"]["count"] else alert["rule"]).inc()
        metrics.ALERT_LATENCY.labels("anomaly").observe(max(0.0, time.time() - reading.at))
        log.info(
            "alert",
            kind="anomaly",
            device_id=reading.device_id,
            alert_id=alert["alert_id"],
            follow_ups=alert["follow_up"]["count"],
        )

    app.agent(results, name="anomaly")(guarded("anomaly", handle))
    changelog = episodes.changelog_topic.get_topic_name()  # what Table.changelog_topic_name returns (not on TableT)
    return [TopicSpec(changelog, partitions, {"cleanup.policy": "compact"})]
