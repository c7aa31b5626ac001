"""`pipeline models train anomaly_detector`: fit the anomaly detector on synthetic telemetry and export
it for Triton.

The autoencoder learns normal operation only (the training split's normal readings); the threshold on
its error is the one with the best F1 on a validation split, and precision, recall and F1 are reported
on a holdout split it never saw, the splits in time order. Writes the model's next version,
`<repository>/anomaly_detector/<N>/` (`export`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.models.anomaly_detector import AnomalyDetector
from pipeline.models.export import export, feature_matrix
from pipeline.models.spec import load_spec_file
from pipeline.synthetic import telemetry

MODEL = "anomaly_detector"


@dataclass(frozen=True)
class AnomalyReport:
    precision: float
    recall: float
    f1: float
    threshold: float  # on the reconstruction error; the exported score is 0.5 there
    validation_f1: float
    anomaly_rate: float
    recall_by_kind: dict[str, float] = field(default_factory=dict)
    train_rows: int = 0
    holdout_rows: int = 0
    seconds: float = 0.0
    version: int = 0  # the version directory it was exported to


def f1_scores(labels: np.ndarray, flagged: np.ndarray) -> tuple[float, float, float]:
    """Pure: precision, recall and F1 of `flagged` against `labels` (0 where undefined)."""
    tp = float(np.sum(flagged & (labels == 1)))
    precision = tp / max(1.0, float(flagged.sum()))
    recall = tp / max(1.0, float((labels == 1).sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_threshold(labels: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Pure: the error threshold (flag at or above) with the best F1 on these rows, and that F1."""
    candidates = np.unique(np.quantile(errors, np.linspace(0.5, 0.999, 400)))
    best = (float(candidates[-1]), 0.0)
    for threshold in candidates:
        _, _, f1 = f1_scores(labels, errors >= threshold)
        if f1 > best[1]:
            best = (float(threshold), f1)
    return best


def train(
    repository: Path,
    devices: int = 1000,
    rows: int = 150_000,
    days: float = 2.5,
    epochs: int = 40,
    seed: int = 0,
    shuffle_labels: bool = False,
) -> AnomalyReport:
    """`rows` readings over `days` days (every hour of the day in each split but the holdout's last
    hours), of as many of the `devices` as that takes. `shuffle_labels`: fit to the labels in random order
    (anomalies among the normal readings it learns, a threshold chosen on scrambled labels), a
    deliberately poor model; its holdout figures are against the true labels."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    spec = load_spec_file(repository / MODEL / "config.pbtxt")
    fleet = max(1, min(devices, int(rows // (days * 86_400 / telemetry.INTERVAL_S))))
    table = telemetry.devices(fleet)
    data = telemetry.readings(rows, fleet, seed=seed + 23)
    baselines = table.set_index("device_id").loc[data.device_id].reset_index()
    x = feature_matrix(spec, data.features, baselines)
    y = data.label
    train_end, validation_end = int(rows * 0.6), int(rows * 0.8)
    fitted_on = y.copy()
    if shuffle_labels:
        fitted_on[:validation_end] = np.random.default_rng(seed).permutation(y[:validation_end])
    model = AnomalyDetector(
        load_column=spec.request_features.index("load"),
        hour_column=spec.request_features.index("hour_of_day"),
        store_offset=len(spec.request_features),
    )
    normal = x[:train_end][fitted_on[:train_end] == 0]
    _fit(model, torch.from_numpy(normal), epochs)
    with torch.inference_mode():
        model.residual_scale.copy_(model.residuals(torch.from_numpy(normal)).std(dim=0).clamp(min=1e-4))
        errors = model.error(torch.from_numpy(x)).numpy()
    threshold, validation_f1 = best_threshold(fitted_on[train_end:validation_end], errors[train_end:validation_end])
    model.threshold.fill_(threshold)
    holdout, flagged = y[validation_end:], errors[validation_end:] >= threshold
    precision, recall, f1 = f1_scores(holdout, flagged)
    kinds = data.kind[validation_end:]
    report = AnomalyReport(
        precision=round(precision, 4),
        recall=round(recall, 4),
        f1=round(f1, 4),
        threshold=threshold,
        validation_f1=round(validation_f1, 4),
        anomaly_rate=round(float(y.mean()), 4),
        recall_by_kind={k: round(float(flagged[kinds == k].mean()), 4) for k in telemetry.KINDS if (kinds == k).any()},
        train_rows=train_end,
        holdout_rows=rows - validation_end,
        seconds=0.0,
    )
    report = AnomalyReport(**{**report.__dict__, "seconds": round(time.perf_counter() - started, 2)})
    with torch.inference_mode():
        scores = model.eval()(torch.from_numpy(x[:train_end])).numpy()
    columns = {name: data.features[name].to_numpy()[:train_end] for name in spec.request_features}
    version_dir = export(model, repository, MODEL, report, (x, fitted_on[:validation_end]), columns | {"score": scores})
    return replace(report, version=int(version_dir.name))


def _fit(model: AnomalyDetector, x: torch.Tensor, epochs: int) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    encoded = model.encode(x)
    for _ in range(epochs):
        for batch in torch.randperm(len(encoded)).split(256):
            optimiser.zero_grad()
            target = encoded[batch]
            torch.nn.functional.mse_loss(model.net(target), target).backward()
            optimiser.step()
