"""What a served model needs from a request, read from its Triton `config.pbtxt` parameters.

The same parsing serves the worker (config fetched from Triton) and training (config file on disk),
so feature order is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from pipeline.errors import ConfigurationError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    entity_key: str
    request_features: tuple[str, ...]
    store_features: tuple[str, ...]
    threshold: float
    max_batch_size: int
    input_name: str
    output_name: str

    @property
    def width(self) -> int:
        return len(self.request_features) + len(self.store_features)

    @property
    def store_feature_names(self) -> tuple[str, ...]:
        """`view:feature` refs as Feast names them in a response (`feature`)."""
        return tuple(ref.split(":", 1)[1] for ref in self.store_features)


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    """Build a spec from a model config in protobuf-JSON form (Triton's `get_model_config`)."""
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    try:
        return ModelSpec(
            name=config["name"],
            entity_key=params["entity_key"],
            request_features=_split(params["request_features"]),
            store_features=_split(params["store_features"]),
            threshold=float(params.get("threshold", "0.5")),
            max_batch_size=int(config.get("max_batch_size", 0)) or 1,
            input_name=config["input"][0]["name"],
            output_name=config["output"][0]["name"],
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigurationError(f"model {config.get('name')!r}: incomplete config ({e})") from e


def load_config_file(path: Path) -> dict[str, Any]:
    message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def load_spec_file(path: Path) -> ModelSpec:
    return spec_from_config(load_config_file(path))


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
