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
