"""Pure scoring steps: check a request against its model, assemble the feature matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.contract import InferenceRequest
from pipeline.errors import InvalidRequest
from pipeline.models.spec import ModelSpec

EntityId = int | str


def entity_id(request: InferenceRequest, spec: ModelSpec) -> int:
    """The entity the model's store features are keyed by; integer keys may arrive as digit strings."""
    value = request.entity.get(spec.entity_key)
    if value is None:
        raise InvalidRequest(f"entity.{spec.entity_key}: required by model {spec.name}", event_id=request.event_id)
    if isinstance(value, str):
        if not value.isdigit():
            raise InvalidRequest(f"entity.{spec.entity_key}: not an integer", event_id=request.event_id)
        return int(value)
    return value


def check_features(request: InferenceRequest, spec: ModelSpec) -> None:
    """Every feature the model reads is there and within its declared domain."""
    missing = [name for name in spec.request_features if name not in request.features]
    if missing:
        raise InvalidRequest(
            f"features.{missing[0]}: required by model {spec.name}"
            + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
            event_id=request.event_id,
        )
    for name, domain in spec.domains.items():
        if (value := request.features[name]) not in domain:
            raise InvalidRequest(
                f"features.{name}: {value:g} is outside its domain {domain} (model {spec.name})",
                event_id=request.event_id,
            )


def feature_matrix(
    spec: ModelSpec, requests: Sequence[InferenceRequest], store_rows: Sequence[np.ndarray]
) -> np.ndarray:
    """One float32 row per request: request features in the spec's order, then the store's."""
    matrix = np.empty((len(requests), spec.width), dtype=np.float32)
    width = len(spec.request_features)
    for i, (request, store_row) in enumerate(zip(requests, store_rows, strict=True)):
        matrix[i, :width] = [request.features[name] for name in spec.request_features]
        matrix[i, width:] = store_row
    return matrix
