from __future__ import annotations

import orjson
import pytest

from pipeline.consumers.anomaly_rules import Reading, Suppression, decide, parse_reading
from pipeline.contract import result_record
from pipeline.errors import InvalidRequest

RULE = Suppression(threshold=0.5, suppress_s=600.0, follow_up_s=60.0)


def reading(offset: int, at: float, score: float = 0.9, device: int = 7) -> Reading:
    return Reading(f"r{offset}", device, score, "anomaly_detector", "1", at, offset, {"temperature": 60.0 + offset})


def run(readings: list[Reading]) -> tuple[dict | None, list[dict]]:
    episode, alerts = None, []
    for r in readings:
        new, alert = decide(RULE, episode, r, now=r.at)
        episode = new if new is not None else episode
        if alert is not None:
            alerts.append(alert)
    return episode, alerts


def test_a_normal_device_raises_nothing():
    episode, alerts = run([reading(i, 1000.0 + i, score=0.2) for i in range(20)])
    assert episode is None and alerts == []


def test_one_alert_per_episode_then_follow_ups_at_powers_of_two_and_each_minute():
    # Anomalous readings every 10 s for 5 minutes: one alert, republished with its running count at
    # 1, 2, 4, 8 and 16, and once a minute has passed since the last publication (14, 22, 28).
    episode, alerts = run([reading(i, 1000.0 + 10 * i) for i in range(30)])
    assert len({a["alert_id"] for a in alerts}) == 1
    assert [a["follow_up"]["count"] for a in alerts] == [0, 1, 2, 4, 8, 14, 16, 22, 28]
    assert episode["follow_ups"] == 29, "every anomalous reading counted, published or not"
    first = alerts[0]
    assert first["kind"] == "anomaly" and first["device_id"] == 7 and first["event_id"] == "r0"
    assert first["window"] == {"start": "1970-01-01T00:16:40.000Z", "end": "1970-01-01T00:26:40.000Z"}
    assert first["readings"] == {"temperature": 60.0}, "the opening reading's values"
    assert alerts[-1]["readings"] == {"temperature": 60.0}
    assert alerts[-1]["follow_up"]["last"]["readings"] == {"temperature": 88.0}, "and the latest one's"


def test_the_next_anomaly_after_the_suppression_window_is_a_new_alert():
    _, alerts = run([reading(0, 1000.0), reading(1, 1300.0), reading(2, 1000.0 + 600.0)])
    assert [a["follow_up"]["count"] for a in alerts] == [0, 1, 0], "a follow-up, then a new episode"
    assert alerts[0]["alert_id"] == alerts[1]["alert_id"] != alerts[2]["alert_id"]
    assert alerts[2]["event_id"] == "r2"


def test_a_reading_read_again_counts_once_and_ids_are_deterministic():
    readings = [reading(i, 1000.0 + 30 * i) for i in range(5)]
    once, first_alerts = run(readings)
    again, second_alerts = run(readings[:3] + readings[1:])  # offsets 1, 2 read twice
    assert once == again
    assert [a["alert_id"] for a in first_alerts] == [a["alert_id"] for a in second_alerts]


def test_results_parse_and_bad_ones_are_refused():
    value = orjson.dumps(
        result_record(
            event_id="e",
            model="anomaly_detector",
            model_version="1",
            score=0.8,
            threshold=0.5,
            latency_ms=1.0,
            entity={"device_id": 3},
            labels=("normal", "anomaly"),
            features={"temperature": 71.5, "rpm": 1500.0},
        )
    )
    parsed = parse_reading(value, at=5.0, offset=9, model="anomaly_detector")
    assert parsed is not None
    assert (parsed.device_id, parsed.score, parsed.offset) == (3, 0.8, 9)
    assert parsed.readings == {"temperature": 71.5, "rpm": 1500.0}
    fraud = orjson.dumps({"event_id": "x", "score": 1, "model": "fraud_scorer", "entity": {"account_id": 1}})
    assert parse_reading(fraud, 0.0, 0, model="anomaly_detector") is None, "another model's result"
    no_device = orjson.dumps({"event_id": "x", "score": 1, "model": "anomaly_detector", "entity": {"account_id": 1}})
    with pytest.raises(InvalidRequest, match=r"entity\.device_id"):
        parse_reading(no_device, 0.0, 0, model="anomaly_detector")
    for unreadable in (b"{not json", b"", b'{"event_id": "x"}'):
        with pytest.raises(InvalidRequest):
            parse_reading(unreadable, 0.0, 0, model="anomaly_detector")
