"""The fraud rules on crafted sequences of results: which alert, when, with what ids."""

from __future__ import annotations

import orjson
import pytest

from pipeline.consumers.fraud_rules import Scored, WindowRule, high_score, parse_result, windowed
from pipeline.errors import InvalidRequest

NOW = 1_800_000_000.0
BURST = WindowRule("repeated_high_scores", size_s=600, count=3, min_score=0.7)
VELOCITY = WindowRule("velocity", size_s=60, count=4, min_score=0.0)


def _scored(event_id: str, score: float, at: float, account: int = 42) -> Scored:
    return Scored(event_id, account, score, "fraud_scorer", "1", at)


def _run(rule: WindowRule, results: list[Scored]) -> list[dict]:
    """The rule over a stream, its window states kept as a table would keep them."""
    states: dict[tuple[object, float], dict] = {}
    alerts = []
    for scored in results:
        key = (scored.account_id, rule.start(scored.at))
        state, alert = windowed(rule, states.get(key), scored, NOW)
        if state is not None:
            states[key] = state
        if alert is not None:
            alerts.append(alert)
    return alerts


def test_a_score_at_the_hard_threshold_alerts_at_once_and_one_below_does_not():
    alert = high_score(_scored("e1", 0.95, NOW), threshold=0.95, now=NOW)
    assert alert is not None and alert["rule"] == "high_score" and alert["kind"] == "fraud"
    assert alert["event_ids"] == ["e1"] and alert["scores"] == [0.95] and alert["account_id"] == 42
    assert high_score(_scored("e2", 0.9499, NOW), threshold=0.95, now=NOW) is None
    assert high_score(_scored("e1", 0.99, NOW + 5), 0.95, NOW + 5)["alert_id"] == alert["alert_id"], "same decision"


def test_three_high_scores_within_a_window_alert_once_for_that_window():
    start = BURST.start(NOW)
    results = [
        _scored("a", 0.8, start + 1),
        _scored("low", 0.2, start + 2),  # below T: not counted
        _scored("b", 0.75, start + 3),
        _scored("c", 0.9, start + 4),  # the third: alerts
        _scored("d", 0.95, start + 5),  # the window has alerted
    ]
    alerts = _run(BURST, results)
    assert len(alerts) == 1
    (alert,) = alerts
    assert alert["rule"] == "repeated_high_scores" and alert["event_ids"] == ["a", "b", "c"]
    assert alert["scores"] == [0.8, 0.75, 0.9]
    assert alert["window"]["end"] > alert["window"]["start"]


def test_high_scores_split_across_two_windows_or_two_accounts_do_not_alert():
    start = BURST.start(NOW)
    across_windows = [_scored("a", 0.8, start + 598), _scored("b", 0.8, start + 599), _scored("c", 0.8, start + 601)]
    across_accounts = [
        _scored("x", 0.8, start + 1, 1),
        _scored("y", 0.8, start + 2, 2),
        _scored("z", 0.8, start + 3, 1),
    ]
    assert _run(BURST, across_windows) == []
    assert _run(BURST, across_accounts) == []


def test_a_result_read_twice_counts_once():
    start = BURST.start(NOW)
    again = [_scored("a", 0.8, start + 1), _scored("a", 0.8, start + 1), _scored("b", 0.8, start + 2)]
    assert _run(BURST, again) == []
    assert len(_run(BURST, [*again, _scored("c", 0.8, start + 3)])) == 1


def test_the_same_window_decided_again_gets_the_same_alert_id():
    start = BURST.start(NOW)
    results = [_scored(e, 0.8, start + i) for i, e in enumerate("abc")]
    first, second = _run(BURST, results), _run(BURST, results)
    assert first[0]["alert_id"] == second[0]["alert_id"]
    other_window = [_scored(e, 0.8, start + 600 + i) for i, e in enumerate("def")]
    assert _run(BURST, other_window)[0]["alert_id"] != first[0]["alert_id"]


def test_velocity_counts_every_result_whatever_its_score():
    start = VELOCITY.start(NOW)
    results = [_scored(f"v{i}", 0.01, start + i) for i in range(6)]
    alerts = _run(VELOCITY, results)
    assert [a["rule"] for a in alerts] == ["velocity"] and alerts[0]["event_ids"] == ["v0", "v1", "v2", "v3"]


def test_a_result_is_read_from_the_contracts_record_and_a_bad_one_is_refused():
    record = {"event_id": "e", "model": "fraud_scorer", "model_version": "3", "score": 0.5, "entity": {"account_id": 7}}
    assert parse_result(orjson.dumps(record), NOW) == Scored("e", 7, 0.5, "fraud_scorer", "3", NOW)
    for bad in (b"not json", orjson.dumps({"event_id": "e", "score": 0.5, "model": "m"}), b"[1]"):
        with pytest.raises(InvalidRequest):
            parse_result(bad, NOW)
