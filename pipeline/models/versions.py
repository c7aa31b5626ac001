"""A model's versions on disk, as Triton's repository lays them out: `<repository>/<model>/<N>/`,
each with its model, its training metrics (`metrics.json`) and its drift reference. A version is a
directory whose name is a positive integer and which holds a model file; the next one trained gets
the number after the highest (`export` writes it aside and renames it into place, so none is
half-written).

`fingerprint` names the data a version was trained on: a SHA-256 over each array's dtype, shape and
bytes, so the same rows give the same fingerprint on every machine and one changed value another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Version:
    number: int
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json, {} when absent

    @property
    def trained_at(self) -> str | None:
        return self.metrics.get("trained_at")

    @property
    def data_fingerprint(self) -> str | None:
        return self.metrics.get("data_fingerprint")


def versions(repository: Path, model: str) -> list[Version]:
    """The model's versions, lowest first (none when the model has no directory)."""
    root = repository / model
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.isdigit() and int(path.name) > 0 and (path / MODEL_FILE).is_file():
            metrics_path = path / METRICS_FILE
            metrics = orjson.loads(metrics_path.read_bytes()) if metrics_path.is_file() else {}
            found.append(Version(int(path.name), path, metrics))
    return sorted(found, key=lambda v: v.number)


def next_version(repository: Path, model: str) -> int:
    """The number the next trained version gets: one past the highest version. A numbered directory
    without a model file (as a checkout ships `1/` with only the Python backend) is not a version:
    it is the one filled next when nothing is above it."""
    found = versions(repository, model)
    return found[-1].number + 1 if found else 1


def fingerprint(arrays: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.tobytes())
    return f"sha256:{digest.hexdigest()}"
