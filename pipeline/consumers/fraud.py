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

from pipeline import metrics, tracing
from pipeline.consumers.app import guarded, published_alerts, results_topic
from pipeline.consumers.fraud_rules import Scored, WindowRule, high_score, parse_result, windowed
from pipeline.errors import InvalidRequest
from pipeline.settings import Settings
from pipeline.topics import TopicSpec
from pipeline.tracing import SpanKind

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
    windows = window_tables(app, rules(settings), partitions)

    def decide(event: Any) -> None:
        scored = read_result(event, fraud.model)
        if scored is None:
            return
        alerts = decide_alerts(scored, windows, fraud.hard_threshold, time.time())
        publish_alerts(alerts, published, event.message.timestamp)

    def decide_traced(event: Any) -> None:
        """A result that names the span that scored it: the rules as a span of that trace, each alert
        they publish a span within (docs/operations.md#traces)."""
        caller = tracing.context_of(event.headers)
        if caller is None:
            return decide(event)
        attributes = {"messaging.system": "kafka", "messaging.destination.name": settings.topics.results}
        with tracing.tracer().start_as_current_span(
            "fraud rules", context=caller, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            decide(event)

    app.agent(results, name="fraud")(guarded("fraud", decide_traced if tracing.ENABLED else decide))
    return [window_changelog(rule, table, partitions) for rule, table in windows]


Windows = list[tuple[WindowRule, Any]]  # each rule with its Faust windowed table, keyed by account


def window_tables(app: faust.App, window_rules: list[WindowRule], partitions: int) -> Windows:
    """One tumbling-window table per rule, its windows kept twice their size."""
    return [
        (
            rule,
            app.Table(f"fraud_{rule.name}", default=dict, partitions=partitions).tumbling(
                rule.size_s, expires=rule.size_s * 2
            ),
        )
        for rule in window_rules
    ]


def read_result(event: Any, model: str) -> Scored | None:
    """The result an event carries, when it is readable and of the fraud model; each event counted."""
    try:
        scored = parse_result(event.value, event.message.timestamp, model=model)
    except InvalidRequest as e:
        metrics.CONSUMED_RESULTS.labels("fraud", "invalid").inc()
        log.warning(
            "result_unreadable", partition=event.message.partition, offset=event.message.offset, error=e.message
        )
        return None
    if scored is None:
        metrics.CONSUMED_RESULTS.labels("fraud", "other_model").inc()
        return None
    metrics.CONSUMED_RESULTS.labels("fraud", "read").inc()
    return scored


def decide_alerts(scored: Scored, windows: Windows, hard_threshold: float, now: float) -> list[dict[str, Any]]:
    """The alerts one result decides: the hard threshold, then each window rule, whose state it updates."""
    decided = []
    if (alert := high_score(scored, hard_threshold, now)) is not None:
        decided.append(alert)
    account = str(scored.account_id)
    for rule, table in windows:
        state, alert = windowed(rule, table[account].current(), scored, now)
        if state is not None:
            table[account] = state
        if alert is not None:
            decided.append(alert)
    return decided


def publish_alerts(decided: list[dict[str, Any]], published: Any, at: float) -> None:
    """Write each alert not published yet to the published-alerts table (its changelog is the alerts
    topic); `at` is the result's record time, for the alert latency."""
    fresh = []
    for alert in decided:
        key = alert["alert_id"].encode()
        if key in published:
            metrics.ALERTS_SKIPPED.labels("fraud").inc()
            continue
        published[key] = orjson.dumps(alert)  # the table's changelog is the alerts topic
        fresh.append(alert["rule"])
        if tracing.ENABLED:
            attributes = {"alert_id": alert["alert_id"], "rule": alert["rule"], "account_id": str(alert["account_id"])}
            tracing.tracer().start_span(f"alert {alert['rule']}", kind=SpanKind.PRODUCER, attributes=attributes).end()
        log.info("alert", rule=alert["rule"], account_id=alert["account_id"], alert_id=alert["alert_id"])
    if fresh:
        # Sent at once by Faust's producer buffer; acknowledged before the offsets of the results
        # behind them are committed (Faust flushes its producer before each commit).
        for rule in fresh:
            metrics.ALERTS.labels("fraud", rule).inc()
        metrics.ALERT_LATENCY.labels("fraud").observe(max(0.0, time.time() - at))


def window_changelog(rule: WindowRule, table: Any, partitions: int) -> TopicSpec:
    """A window table's changelog topic: compacted, and deleted past twice the window."""
    return TopicSpec(
        table.table.changelog_topic_name,
        partitions,
        {"cleanup.policy": "compact,delete", "retention.ms": str(int(rule.size_s * 2 * 1000))},
    )
