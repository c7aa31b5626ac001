"""What a served model needs from a request, read from its Triton `config.pbtxt` parameters.

The same parsing serves the worker (config fetched from Triton) and training (config file on disk),
so feature order is written down once. `domains` names each request feature's domain,
`name:[low,high]` (a closed range) or `name:{a,b}` (allowed values), separated by `;`; `labels` the
result's label below and at or above the threshold; `result_features` the request features a result
carries back (the readings an anomaly alert shows), none by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format  # type: ignore[import-untyped]  # no types-protobuf in dev deps
from tritonclient.grpc import model_config_pb2

from pipeline.errors import ConfigurationError


@dataclass(frozen=True)
class Domain:
    """The values a request feature may take: a closed range, or a set of allowed values."""

    low: float = -math.inf
    high: float = math.inf
    allowed: frozenset[float] | None = None

    def __contains__(self, value: float) -> bool:
        if self.allowed is not None:
            return value in self.allowed
        return self.low <= value <= self.high

    def __str__(self) -> str:
        if self.allowed is not None:
            return "one of " + ", ".join(f"{v:g}" for v in sorted(self.allowed))
        return f"[{self.low:g}, {self.high:g}]"


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
    domains: Mapping[str, Domain] = field(default_factory=dict)
    labels: tuple[str, str] = ("legit", "fraud")  # below the threshold, at or above it
    result_features: tuple[str, ...] = ()  # request features echoed in each result

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
        request_features = _split(params["request_features"])
        labels = _split(params.get("labels", "legit,fraud"))
        if len(labels) != 2:
            raise ValueError(f"labels: two names expected, got {params['labels']!r}")
        echoed = _split(params.get("result_features", ""))
        if unknown := [name for name in echoed if name not in request_features]:
            raise ValueError(f"result_features: {', '.join(unknown)} not request features")
        return ModelSpec(
            name=config["name"],
            entity_key=params["entity_key"],
            request_features=request_features,
            store_features=_split(params["store_features"]),
            threshold=float(params.get("threshold", "0.5")),
            max_batch_size=int(config.get("max_batch_size", 0)) or 1,
            input_name=config["input"][0]["name"],
            output_name=config["output"][0]["name"],
            domains=parse_domains(params.get("domains", ""), request_features),
            labels=(labels[0], labels[1]),
            result_features=echoed,
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigurationError(f"model {config.get('name')!r}: incomplete or invalid config ({e})") from e


def parse_domains(text: str, request_features: tuple[str, ...]) -> dict[str, Domain]:
    """`amount:[0,1000000];is_foreign:{0,1}` → each named request feature's domain."""
    domains: dict[str, Domain] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, _, body = (piece.strip() for piece in part.partition(":"))
        if name not in request_features:
            raise ValueError(f"domains: {name!r} is not a request feature")
        try:
            values = [float(v) for v in body[1:-1].split(",")] if len(body) > 2 else []
        except ValueError:
            values = []
        if body.startswith("[") and body.endswith("]") and len(values) == 2 and values[0] <= values[1]:
            domains[name] = Domain(low=values[0], high=values[1])
        elif body.startswith("{") and body.endswith("}") and values:
            domains[name] = Domain(allowed=frozenset(values))
        else:
            raise ValueError(f"domains: {part!r} is neither name:[low,high] nor name:{{a,b,...}}")
    return domains


def load_config_file(path: Path) -> dict[str, Any]:
    message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def load_spec_file(path: Path) -> ModelSpec:
    return spec_from_config(load_config_file(path))


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
