"""The oracle for scores: the exported model, run in the test, on features gathered apart from the
worker's code (its config read as text, Feast asked directly)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from feast import FeatureStore

from pipeline.models import routing_log
from pipeline.settings import Settings


def _declared_features(config: Path) -> tuple[str, list[str], list[str], int]:
    """The model's entity key, request features, store features (`view:feature`) and input width, in the
    order its config.pbtxt declares them: read here from the file's text, apart from the worker's parser."""
    text = config.read_text()
    params = dict(re.findall(r'key:\s*"([^"]+)",\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))
    width = re.search(r'name:\s*"FEATURES".*?dims:\s*\[\s*(\d+)\s*\]', text, re.DOTALL)
    assert width is not None, "config.pbtxt declares the FEATURES input's width"
    split = [
        [name.strip() for name in params[key].split(",") if name.strip()]
        for key in ("request_features", "store_features")
    ]
    return params["entity_key"], split[0], split[1], int(width.group(1))


def reference_scores(
    settings: Settings, requests: list[dict[str, Any]], model: str = "fraud_scorer", version: str | None = None
) -> np.ndarray:
    """The exported TorchScript model (`version`, default: the stable one) run in-process, on a matrix
    built here: each request's features, then its entity's features from Feast's get_online_features,
    in the order config.pbtxt declares."""
    entity_key, request_features, store_features, width = _declared_features(
        settings.triton.model_repository / model / "config.pbtxt"
    )
    assert len(request_features) + len(store_features) == width
    store = FeatureStore(repo_path=str(settings.feast.repo_path))
    entities = [r["entity"][entity_key] for r in requests]
    online = store.get_online_features(store_features, {entity_key: entities}, full_feature_names=True).to_dict()
    columns = [ref.replace(":", "__", 1) for ref in store_features]  # Feast's full names: view__feature
    matrix = np.array(
        [
            [r["features"][name] for name in request_features] + [online[column][i] for column in columns]
            for i, r in enumerate(requests)
        ],
        dtype=np.float32,
    )
    assert matrix.shape == (len(requests), width) and not np.isnan(matrix).any(), "every entity has its features"
    if version is None:  # the version the workers route to
        version = routing_log.read(settings).routing(model).stable
    model_path = settings.triton.model_repository / model / version / "model.pt"
    scorer = torch.jit.load(str(model_path))
    with torch.inference_mode():
        return scorer(torch.from_numpy(matrix)).numpy().reshape(-1)
