from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.contract import parse_request
from pipeline.errors import InvalidRequest
from pipeline.features.lookup import rows_by_entity
from pipeline.inference.scoring import check_features, entity_id, feature_matrix
from pipeline.models.spec import load_spec_file
from pipeline.settings import PROJECT_ROOT

SPEC = load_spec_file(PROJECT_ROOT / "triton_models" / "fraud_scorer" / "config.pbtxt")
FEATURES = {name: float(i + 1) for i, name in enumerate(SPEC.request_features)}


def request(**change):
    body = {"event_id": "e1", "entity": {"account_id": 7}, "features": FEATURES} | change
    return parse_request(orjson.dumps(body))


def test_the_matrix_has_request_features_then_store_features_in_spec_order():
    store_row = np.arange(10, 16, dtype=np.float32)
    matrix = feature_matrix(SPEC, [request(), request(event_id="e2")], [store_row, store_row + 1])
    assert matrix.dtype == np.float32 and matrix.shape == (2, 12)
    assert matrix[0].tolist() == [1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15]
    assert matrix[1, 6] == 11


def test_a_missing_request_feature_is_named():
    features = {k: v for k, v in FEATURES.items() if k != "hour_of_day"}
    with pytest.raises(InvalidRequest, match=r"features\.hour_of_day: required by model fraud_scorer"):
        check_features(request(features=features), SPEC)


def test_entity_ids_may_be_digit_strings_but_not_words():
    assert entity_id(request(entity={"account_id": "42"}), SPEC) == 42
    with pytest.raises(InvalidRequest, match=r"entity\.account_id"):
        entity_id(request(entity={"account_id": "abc"}), SPEC)
    with pytest.raises(InvalidRequest, match="required by model"):
        entity_id(request(entity={"customer": 1}), SPEC)


def test_feast_rows_become_float_rows_and_gaps_become_none():
    names = SPEC.store_feature_names
    response = {name: [1.0, None] for name in names} | {"account_id": [1, 2]}
    rows = rows_by_entity(SPEC, [1, 2], response)
    assert rows[1] is not None and rows[1].tolist() == [1.0] * len(names)
    assert rows[2] is None


IN_DOMAIN = {
    "amount": 120.0,
    "merchant_category": 5411.0,
    "hour_of_day": 13.0,
    "is_foreign": 0.0,
    "card_present": 1.0,
    "distance_from_home_km": 4.2,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hour_of_day": 99.0}, r"features\.hour_of_day: 99 is outside its domain \[0, 23\] \(model fraud_scorer\)"),
        ({"is_foreign": 7.0}, r"features\.is_foreign: 7 is outside its domain one of 0, 1"),
        ({"amount": -12.5}, r"features\.amount: -12\.5 is outside its domain \[0, 1e\+06\]"),
    ],
)
def test_a_feature_outside_its_domain_is_refused_naming_the_field_and_domain(change, message):
    with pytest.raises(InvalidRequest, match=message) as refused:
        check_features(request(features=IN_DOMAIN | change), SPEC)
    assert refused.value.code == "invalid_request" and refused.value.event_id == "e1"


def test_features_within_their_domains_pass():
    check_features(request(features=IN_DOMAIN), SPEC)
    check_features(request(features=IN_DOMAIN | {"hour_of_day": 0.0, "amount": 0.0}), SPEC)
