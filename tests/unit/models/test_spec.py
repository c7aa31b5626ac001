from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError
from pipeline.models.spec import load_config_file, spec_from_config
from pipeline.settings import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "triton_models" / "fraud_scorer" / "config.pbtxt"


def test_the_model_config_names_what_the_model_needs():
    spec = spec_from_config(load_config_file(CONFIG))
    assert spec.name == "fraud_scorer"
    assert spec.entity_key == "account_id"
    assert spec.width == 12
    assert spec.max_batch_size >= 256
    assert spec.store_feature_names[0] == "avg_amount_30d"
    assert 0 < spec.threshold < 1


def test_a_config_without_feature_parameters_is_a_configuration_error():
    config = load_config_file(CONFIG)
    del config["parameters"]["store_features"]
    with pytest.raises(ConfigurationError, match="fraud_scorer"):
        spec_from_config(config)


def test_the_triton_config_batches_dynamically():
    config = load_config_file(CONFIG)
    assert "dynamic_batching" in config
    assert int(config["max_batch_size"]) >= 256


ANOMALY = PROJECT_ROOT / "triton_models" / "anomaly_detector" / "config.pbtxt"


def test_each_model_declares_the_domain_of_each_request_feature():
    for path in (CONFIG, ANOMALY):
        spec = spec_from_config(load_config_file(path))
        assert set(spec.domains) == set(spec.request_features), spec.name
    fraud = spec_from_config(load_config_file(CONFIG))
    assert -1.0 not in fraud.domains["amount"] and 0.0 in fraud.domains["amount"]
    assert 1.0 in fraud.domains["is_foreign"] and 7.0 not in fraud.domains["is_foreign"]
    assert str(fraud.domains["is_foreign"]) == "one of 0, 1"
    assert str(fraud.domains["hour_of_day"]) == "[0, 23]"


def test_the_anomaly_detector_names_its_device_features_and_labels():
    spec = spec_from_config(load_config_file(ANOMALY))
    assert spec.entity_key == "device_id"
    assert spec.width == 14
    assert spec.labels == ("normal", "anomaly")
    assert spec.store_feature_names[:2] == ("temperature_mean", "temperature_std")
    assert spec.result_features == ("temperature", "vibration", "pressure", "rpm", "load"), "its alerts' readings"
    assert spec_from_config(load_config_file(CONFIG)).result_features == (), "fraud results echo nothing"


def test_echoed_features_must_be_request_features():
    config = load_config_file(ANOMALY)
    config["parameters"]["result_features"] = {"string_value": "temperature,humidity"}
    with pytest.raises(ConfigurationError, match="humidity not request features"):
        spec_from_config(config)


@pytest.mark.parametrize(
    ("domains", "problem"),
    [
        ("amount:[5,1]", "neither"),
        ("amount:0..5", "neither"),
        ("amount:{}", "neither"),
        ("no_such_feature:[0,1]", "not a request feature"),
    ],
)
def test_a_malformed_domain_is_a_configuration_error(domains, problem):
    config = load_config_file(CONFIG)
    config["parameters"]["domains"] = {"string_value": domains}
    with pytest.raises(ConfigurationError, match=problem):
        spec_from_config(config)
