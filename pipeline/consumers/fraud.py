"""The fraud consumer (`pipeline consumers fraud`): the rules of `fraud_rules` over the results topic,
alerts to `fraud.alerts`.

Each rule's window state is a Faust windowed table keyed by account (tumbling windows, by the results'
record time), backed by its changelog topic. Publishing an alert is writing it to a table keyed by
`alert_id` whose changelog is `fraud.alerts` itself: an alert goes to the alerts partition numbered
like the result's, and the consumer that owns a results partition reads the alerts already published
from it before it reads results. So a decision made again (a result read twice, after a crash or as
partitions move) finds its alert there and is not published twice (docs/architecture.md#consumers).
"""

from __future__ import annotations

import time
from typing import Any

import faust
import orjson
import structlog

from pipeline import metrics
from pipeline.consumers.app import guarded, published_alerts, results_topic
from pipeline.consumers.fraud_rules import WindowRule, high_score, parse_result, windowed
from pipeline.errors import InvalidRequest
from pipeline.settings import Settings
from pipeline.topics import TopicSpec

log = structlog.get_logger(__name__)


def rules(settings: Settings) -> list[WindowRule]:
    fraud = settings.consumers.fraud
    return [
        WindowRule("repeated_high_scores", fraud.high_score_window_s, fraud.high_score_count, fraud.high_score),
        WindowRule("velocity", fraud.velocity_window_s, fraud.velocity_count, 0.0),
    ]


def install(app: faust.App, settings: Settings, partitions: int) -> list[TopicSpec]:
    """The fraud agent and its tables, on `app`; returns the tables' changelog topics, to be created
    before the app starts (Faust checks a table's changelog against its source on the first write,
    against the partition counts it saw when it joined: a changelog it created itself after that
    reads as 0 partitions)."""
    fraud = settings.consumers.fraud
    results = results_topic(app, settings)
    published = published_alerts(app, "fraud_alerts", settings.topics.alerts, partitions)
    windows: list[tuple[WindowRule, Any]] = [
        (
            rule,
            app.Table(f"fraud_{rule.name}", default=dict, partitions=partitions).tumbling(
                rule.size_s, expires=rule.size_s * 2
            ),
        )
        for rule in rules(settings)
    ]

    def decide(event: Any) -> None:
        at = event.message.timestamp
        try:
            scored = parse_result(event.value, at)
        except InvalidRequest as e:
            metrics.CONSUMED_RESULTS.labels("fraud", "invalid").inc()
            log.warning(
                "result_unreadable", partition=event.message.partition, offset=event.message.offset, error=e.message
            )
            return
        if scored.model != fraud.model:
            metrics.CONSUMED_RESULTS.labels("fraud", "other_model").inc()
            return
        metrics.CONSUMED_RESULTS.labels("fraud", "read").inc()
        now = time.time()
        decided = []
        if (alert := high_score(scored, fraud.hard_threshold, now)) is not None:
            decided.append(alert)
        account = str(scored.account_id)
        for rule, table in windows:
            state, alert = windowed(rule, table[account].current(), scored, now)
            if state is not None:
                table[account] = state
            if alert is not None:
                decided.append(alert)
        fresh = []
        for alert in decided:
            key = alert["alert_id"].encode()
            if key in published:
                metrics.ALERTS_SKIPPED.labels("fraud").inc()
                continue
            published[key] = orjson.dumps(alert)  # the table's changelog is the alerts topic
            fresh.append(alert["rule"])
            log.info("alert", rule=alert["rule"], account_id=alert["account_id"], alert_id=alert["alert_id"])
        if fresh:
            # Sent at once by Faust's producer buffer; acknowledged before the offsets of the results
            # behind them are committed (Faust flushes its producer before each commit).
            for rule in fresh:
                metrics.ALERTS.labels("fraud", rule).inc()
            metrics.ALERT_LATENCY.labels("fraud").observe(max(0.0, time.time() - at))

    app.agent(results, name="fraud")(guarded("fraud", decide))
    return [
        TopicSpec(
            table.table.changelog_topic_name,
            partitions,
            {"cleanup.policy": "compact,delete", "retention.ms": str(int(rule.size_s * 2 * 1000))},
        )
        for rule, table in windows
    ]
