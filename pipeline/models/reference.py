"""A model's training reference for drift monitoring, written beside it as `reference.json`.

For each request feature, and for the score, frozen from the training data: the deciles' edges (fewer
bins where values repeat, as for a flag), each bin's share of the training rows, and for continuous
values the percentiles, for a Kolmogorov-Smirnov statistic (`consumers.drift_stats`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONTINUOUS = 20  # distinct training values above which a feature gets a KS statistic too
LEVELS = np.linspace(0, 1, 101)
FILE = "reference.json"


@dataclass(frozen=True)
class Reference:
    edges: tuple[float, ...]  # inner bin edges: bin i holds edges[i-1] < x <= edges[i]
    expected: tuple[float, ...]  # each bin's share of the training rows
    percentiles: tuple[float, ...] | None  # 0th..100th, for KS; None for a discrete feature

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "expected": list(self.expected), "percentiles": self.percentiles}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        percentiles = data.get("percentiles")
        return cls(
            tuple(float(e) for e in data["edges"]),
            tuple(float(e) for e in data["expected"]),
            None if percentiles is None else tuple(float(p) for p in percentiles),
        )


def reference_for(values: np.ndarray, bins: int = 10) -> Reference:
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    continuous = len(np.unique(values)) > CONTINUOUS
    return Reference(
        tuple(edges.tolist()),
        tuple((counts / len(values)).tolist()),
        tuple(np.quantile(values, LEVELS).tolist()) if continuous else None,
    )


def write(version_dir: Path, columns: Mapping[str, np.ndarray]) -> Path:
    """`reference.json` for these columns (each request feature, and `score`)."""
    path = version_dir / FILE
    frozen = {name: reference_for(values).to_json() for name, values in columns.items()}
    data = {"rows": {name: len(values) for name, values in columns.items()}, "columns": frozen}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load(version_dir: Path) -> dict[str, Reference]:
    data = json.loads((version_dir / FILE).read_text())
    return {name: Reference.from_json(column) for name, column in data["columns"].items()}


def latest(model_dir: Path) -> tuple[str, dict[str, Reference]] | None:
    """The newest version of a model that has a training reference, and that reference."""
    versions = sorted((int(d.name) for d in model_dir.glob("[0-9]*") if (d / FILE).exists()), reverse=True)
    if not versions:
        return None
    return str(versions[0]), load(model_dir / str(versions[0]))
