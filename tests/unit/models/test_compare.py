"""Two versions' results for the same events compared (pipeline/models/compare.py), against counts
and shifts worked out by hand."""

from __future__ import annotations

import orjson

from pipeline.models.compare import compare


def _result(event_id: str, version: str, score: float) -> dict:
    return {
        "event_id": event_id,
        "model": "fraud_scorer",
        "model_version": version,
        "score": score,
        "label": "fraud" if score >= 0.5 else "legit",
    }


STABLE = {e: _result(e, "1", s) for e, s in [("a", 0.10), ("b", 0.40), ("c", 0.60), ("d", 0.90), ("x", 0.2)]}
CANDIDATE = {e: _result(e, "2", s) for e, s in [("a", 0.20), ("b", 0.55), ("c", 0.45), ("d", 0.90), ("y", 0.7)]}


def test_only_events_both_scored_count_with_their_flips_and_shifts():
    found = compare("fraud_scorer", STABLE, CANDIDATE)

    assert (found.stable, found.candidate) == ("1", "2")
    assert (found.events, found.only_stable, found.only_candidate) == (4, 1, 1)
    assert found.agreement == 0.5  # a and d keep their label; b and c flip
    assert found.flips == {"legit -> fraud": 1, "fraud -> legit": 1}
    # shifts: +0.10, +0.15, -0.15, 0.00
    assert abs(found.shift_mean - 0.025) < 1e-12
    assert abs(found.shift_mean_abs - 0.10) < 1e-12
    assert abs(found.shift_max_abs - 0.15) < 1e-12
    assert 0.10 <= found.shift_p95_abs <= 0.15 + 1e-12


def test_the_json_and_the_table_say_the_same():
    found = compare("fraud_scorer", STABLE, CANDIDATE)
    as_json = orjson.loads(orjson.dumps(found.to_json()))
    assert as_json["agreement"] == 0.5 and as_json["flips"] == {"fraud -> legit": 1, "legit -> fraud": 1}
    assert as_json["score_shift"]["max_abs"] == found.shift_max_abs
    table = found.table()
    assert table.splitlines()[0] == "fraud_scorer: version 2 against stable version 1"
    assert "labels agree" in table and "50.00%" in table
    assert "flips legit -> fraud" in table


def test_no_common_event_is_zero_events_not_an_error():
    found = compare("fraud_scorer", {"a": STABLE["a"]}, {"y": CANDIDATE["y"]})
    assert (found.events, found.agreement, found.shift_max_abs) == (0, 0.0, 0.0)


def test_results_of_several_versions_on_one_side_are_named_as_such():
    mixed = {"a": _result("a", "1", 0.1), "b": _result("b", "3", 0.4)}
    assert compare("fraud_scorer", mixed, CANDIDATE).stable == "mixed: 1, 3"
