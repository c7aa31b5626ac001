"""The body of Triton's repository load request for the versions a routing serves, pure.

In explicit model-control mode, `POST /v2/repository/models/<model>/load` with a `config` parameter
(the model's configuration as JSON) loads the versions its `version_policy` names, side by side, and
unloads those it no longer names. The configuration is the model's own
`config.pbtxt` with only the version policy replaced, so nothing else of it can drift from the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format, text_format  # type: ignore[import-untyped]  # no types-protobuf
from tritonclient.grpc import model_config_pb2

from pipeline.errors import ConfigurationError


def load_config(config_text: str, versions: Iterable[int]) -> dict[str, Any]:
    """The configuration `config_text` (config.pbtxt) gives, serving exactly `versions`."""
    chosen = sorted(set(versions))
    if not chosen or chosen[0] < 1:
        raise ConfigurationError(f"versions to serve must be positive version numbers, not {chosen or 'none'}")
    message = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    message.version_policy.Clear()
    message.version_policy.specific.versions.extend(chosen)
    config: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return config


def load_body(config_file: Path, versions: Iterable[int]) -> bytes:
    """The JSON body of the load request for the model whose config.pbtxt is `config_file`."""
    config = load_config(config_file.read_text(), versions)
    return orjson.dumps({"parameters": {"config": orjson.dumps(config).decode()}})
