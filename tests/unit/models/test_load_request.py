"""The repository load request's body (pipeline/models/load_request.py) for the project's own models:
the same configuration as config.pbtxt, read back by Triton's own protobuf schema, but for the
versions it serves."""

from __future__ import annotations

import orjson
import pytest
from google.protobuf import json_format, text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2

from pipeline.errors import ConfigurationError
from pipeline.models.load_request import load_body, load_config
from pipeline.settings import Settings

MODELS = ("fraud_scorer", "anomaly_detector")


@pytest.mark.parametrize("model", MODELS)
def test_the_body_is_the_models_own_config_serving_exactly_the_versions_asked(model):
    config_file = Settings().triton.model_repository / model / "config.pbtxt"
    body = orjson.loads(load_body(config_file, [2, 1, 2]))

    served = json_format.Parse(body["parameters"]["config"], model_config_pb2.ModelConfig())
    assert list(served.version_policy.specific.versions) == [1, 2]
    own = text_format.Parse(config_file.read_text(), model_config_pb2.ModelConfig())
    served.ClearField("version_policy")
    own.ClearField("version_policy")
    assert served == own, "nothing but the version policy differs from config.pbtxt"


def test_no_version_or_a_version_below_one_is_refused():
    text = (Settings().triton.model_repository / "fraud_scorer" / "config.pbtxt").read_text()
    with pytest.raises(ConfigurationError, match="positive version numbers"):
        load_config(text, [])
    with pytest.raises(ConfigurationError, match="positive version numbers"):
        load_config(text, [0, 1])
