"""What both models' training shares (`train`, `anomaly_training`): the training matrix in the order
the model's config names its features, and the export of a fitted model as the model's next version
for Triton (`versions`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.errors import ConfigurationError
from pipeline.models import reference, versions
from pipeline.models.spec import ModelSpec

BACKEND_FILE = "model.py"  # the Python backend's entry point, in every version directory


def feature_matrix(spec: ModelSpec, request: pd.DataFrame, entity_rows: pd.DataFrame) -> np.ndarray:
    """Columns in the order the model config names them: request features, then store features."""
    columns = [request[name].to_numpy() for name in spec.request_features]
    columns += [entity_rows[name].to_numpy() for name in spec.store_feature_names]
    return np.column_stack(columns).astype(np.float32)


def export(
    model: torch.nn.Module,
    repository: Path,
    name: str,
    report: Any,
    training_data: Sequence[np.ndarray],
    reference_columns: Mapping[str, np.ndarray],
) -> Path:
    """The model as the next version of `<repository>/<name>/`: TorchScript (`model.pt`), the Python
    backend's `model.py` (copied from the lowest version that has one; a link stays a link), the
    training report with the version, when it was trained and the training data's fingerprint
    (`metrics.json`), and the drift monitor's reference (`reference.json`). Written aside and renamed
    into place, so a version directory is whole or absent. Returns the version directory."""
    model_dir = repository / name
    backend = _backend_file(model_dir)
    number = versions.next_version(repository, name)
    staging = model_dir / f".staging-{number}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if backend.is_symlink():  # a model sharing another's backend keeps the link, and the checkout stays clean
        (staging / BACKEND_FILE).symlink_to(os.readlink(backend))
    else:
        shutil.copyfile(backend, staging / BACKEND_FILE)
    torch.jit.script(model).save(str(staging / versions.MODEL_FILE))
    metrics = asdict(report) | {
        "version": number,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "data_fingerprint": versions.fingerprint(training_data),
    }
    (staging / versions.METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    reference.write(staging, reference_columns)
    version_dir = model_dir / str(number)
    shutil.rmtree(version_dir, ignore_errors=True)  # a numbered directory without a model (`next_version`)
    staging.rename(version_dir)
    return version_dir


def _backend_file(model_dir: Path) -> Path:
    numbered = sorted((p for p in model_dir.glob("[0-9]*") if p.name.isdigit()), key=lambda p: int(p.name))
    for version_dir in numbered:
        if (version_dir / BACKEND_FILE).is_file():
            return version_dir / BACKEND_FILE
    raise ConfigurationError(f"{model_dir}: no version directory holds the Python backend's {BACKEND_FILE}")
