"""What both models' training shares (`train`, `anomaly_training`): the training matrix in the order
the model's config names its features, and the export of a fitted model for Triton."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.models.spec import ModelSpec


def feature_matrix(spec: ModelSpec, request: pd.DataFrame, entity_rows: pd.DataFrame) -> np.ndarray:
    """Columns in the order the model config names them: request features, then store features."""
    columns = [request[name].to_numpy() for name in spec.request_features]
    columns += [entity_rows[name].to_numpy() for name in spec.store_feature_names]
    return np.column_stack(columns).astype(np.float32)


def export(model: torch.nn.Module, version_dir: Path, report: Any) -> None:
    """The model as TorchScript (`model.pt`) and its training report (`metrics.json`, a dataclass)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(version_dir / "model.pt"))
    (version_dir / "metrics.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
