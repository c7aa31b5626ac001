"""The drift monitor on the real broker: an unshifted request stream raises no drift alert and keeps
every gauge low; a stream with one feature shifted raises the alert and the gauge for that feature
only, once per level crossed."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.local.stack import free_port
from pipeline.topics import TopicSpec
from tests.conftest import metric

pytestmark = pytest.mark.integration

FEATURES = ("amount", "merchant_category", "hour_of_day", "is_foreign", "card_present", "distance_from_home_km")


def _drift_alerts(settings) -> list[dict]:
    """Every drift alert published so far: the alerts topic read to its end."""
    return probe.read_to_end(settings, {TopicPartition(settings.topics.drift_alerts, 0): 0})


def _until_processed(settings, group: str, port: int, count: int, timeout_s: float = 120) -> None:
    """Until the drift monitor has committed, on every requests partition, the offset past the end of
    what was published: it acks a request once done with it, an alert it raised on the way delivered
    (its agent awaits each send), and commits what it acked. So every alert of those requests is on
    the alerts topic by then. It read `count` requests in all."""
    ends = {tp: end for tp, end in probe.end_offsets(settings, [settings.topics.requests]).items() if end > 0}
    probe.until_committed(settings, group, ends, timeout_s)
    assert metric(port, "pipeline_consumer_results_total", consumer="drift", outcome="read") >= count


def test_a_shifted_feature_raises_its_drift_alert_and_gauge_and_an_unshifted_stream_none(pipeline_settings, processes):
    settings = pipeline_settings()
    port = free_port()
    settings = settings.updated(
        topics={"drift_alerts": f"{settings.topics.requests}.drift"}, consumers={"metrics_port": port}
    )
    topics.apply(settings, [TopicSpec(settings.topics.drift_alerts, 1)])
    group = f"drift-{uuid.uuid4().hex[:6]}"
    process = processes.stack.start_consumer(settings, "drift", group, "--from-beginning", "--group-id", group)
    processes.started.append(process)

    unshifted = traffic.valid_requests(2000, prefix="d-plain-", seed=21)
    probe.publish(settings, [traffic.message_for(r) for r in unshifted])
    _until_processed(settings, group, port, 2000)
    assert _drift_alerts(settings) == [], "an unshifted stream of 2,000 raises none"
    for feature in FEATURES:
        assert metric(port, "pipeline_drift_psi", model="fraud_scorer", feature=feature) < 0.1, feature

    shifted = traffic.valid_requests(2000, prefix="d-shift-", seed=22)
    for request in shifted:
        request["features"]["amount"] *= 3  # type: ignore[index]
    probe.publish(settings, [traffic.message_for(r) for r in shifted])
    _until_processed(settings, group, port, 4000)

    alerts = _drift_alerts(settings)
    assert {a["feature"] for a in alerts} == {"amount"}, "the shifted feature only"
    assert all(n == 1 for n in Counter((a["feature"], a["level"]) for a in alerts).values()), "once per crossing"
    assert alerts[-1]["level"] == "alert" and alerts[-1]["psi"] >= 0.25
    assert alerts[-1]["kind"] == "drift" and alerts[-1]["model"] == "fraud_scorer" and alerts[-1]["reason"]
    assert metric(port, "pipeline_drift_psi", model="fraud_scorer", feature="amount") >= 0.25
    assert metric(port, "pipeline_drift_ks", model="fraud_scorer", feature="amount") > 0.2
    for feature in FEATURES[1:]:
        assert metric(port, "pipeline_drift_psi", model="fraud_scorer", feature=feature) < 0.1, feature
