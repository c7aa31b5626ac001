"""`pipeline models train`: fit the fraud scorer on synthetic data and export it for Triton (the anomaly
detector's training: `anomaly_training`).

Writes the model's next version, `<repository>/fraud_scorer/<N>/` (`export`): the TorchScript model,
its metrics and the drift monitor's training reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.errors import ConfigurationError
from pipeline.models import versions
from pipeline.models.export import export, feature_matrix
from pipeline.models.fraud_scorer import FraudScorer
from pipeline.models.spec import ModelSpec, load_spec_file
from pipeline.synthetic import cards

LOG_FEATURES = frozenset({"amount", "distance_from_home_km", "avg_amount_30d"})


@dataclass(frozen=True)
class TrainingReport:
    holdout_auc: float
    fraud_rate: float
    precision_at_threshold: float
    recall_at_threshold: float
    threshold: float
    train_rows: int
    holdout_rows: int
    seconds: float
    version: int = 0  # the version directory it was exported to


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney form of ROC-AUC (ties count half)."""
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(
    repository: Path,
    rows: int = 80_000,
    epochs: int = 12,
    seed: int = 0,
    accounts: int = 10_000,
    shuffle_labels: bool = False,
    name: str = "fraud_scorer",
) -> TrainingReport:
    """`name`: the model directory (a copy of the fraud scorer's under another name, say).
    `shuffle_labels`: fit to the labels in random order, a deliberately useless model (what the
    rollout guard must roll back); its holdout figures are against the true labels."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    spec = load_spec_file(repository / name / "config.pbtxt")
    table = cards.accounts(accounts)
    data = cards.transactions(rows, table, seed=seed + 11)
    acct = table.set_index("account_id").loc[data.account_id].reset_index()
    x = feature_matrix(spec, data.features, acct)
    y = data.label.astype(np.float32)
    split = int(rows * 0.8)
    fitted_on = np.random.default_rng(seed).permutation(y[:split]) if shuffle_labels else y[:split]
    model = _fit(spec, x[:split], fitted_on, epochs)
    with torch.inference_mode():
        scores = model(torch.from_numpy(x[split:])).numpy()
    holdout = y[split:]
    flagged = scores >= spec.threshold
    report = TrainingReport(
        holdout_auc=roc_auc(holdout, scores),
        fraud_rate=float(y.mean()),
        precision_at_threshold=float(holdout[flagged].mean()) if flagged.any() else 0.0,
        recall_at_threshold=float(flagged[holdout == 1].mean()),
        threshold=spec.threshold,
        train_rows=split,
        holdout_rows=rows - split,
        seconds=round(time.perf_counter() - started, 2),
    )
    columns = {feature: data.features[feature].to_numpy()[:split] for feature in spec.request_features}
    version_dir = export(model, repository, name, report, (x, fitted_on), columns | {"score": scores})
    return replace(report, version=int(version_dir.name))


def _fit(spec: ModelSpec, x: np.ndarray, y: np.ndarray, epochs: int) -> FraudScorer:
    names = spec.request_features + spec.store_feature_names
    log_columns = torch.tensor([name in LOG_FEATURES for name in names])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    scaled = torch.where(log_columns, torch.log1p(torch.clamp(xt, min=0.0)), xt)
    model = FraudScorer(scaled.mean(0), scaled.std(0).clamp(min=1e-6), log_columns)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for batch in torch.randperm(len(xt)).split(512):
            optimiser.zero_grad()
            loss_fn(model.logits(xt[batch]), yt[batch]).backward()
            optimiser.step()
    return model.eval()


MODELS = ("fraud_scorer", "anomaly_detector")


def train_model(name: str, repository: Path, accounts: int, devices: int, shuffle_labels: bool = False) -> Any:
    """Train one of MODELS and export it as its next version; its training report."""
    if name == "fraud_scorer":
        return train(repository, accounts=accounts, shuffle_labels=shuffle_labels)
    if name == "anomaly_detector":
        from pipeline.models import anomaly_training

        return anomaly_training.train(repository, devices=devices, shuffle_labels=shuffle_labels)
    raise ConfigurationError(f"unknown model {name!r}: one of {', '.join(MODELS)}")


def describe(name: str, report: Any) -> str:
    """One line of a training report, as `pipeline models train` prints it."""
    if name == "fraud_scorer":
        return (
            f"fraud_scorer version {report.version}: holdout ROC-AUC {report.holdout_auc:.4f}, "
            f"fraud rate {report.fraud_rate:.3f}, "
            f"precision {report.precision_at_threshold:.3f} / recall {report.recall_at_threshold:.3f} "
            f"at threshold {report.threshold}, {report.train_rows} training rows, {report.seconds:.1f} s"
        )
    kinds = ", ".join(f"{kind} {recall:.2f}" for kind, recall in report.recall_by_kind.items())
    return (
        f"anomaly_detector version {report.version}: holdout precision {report.precision:.3f} / "
        f"recall {report.recall:.3f} / "
        f"F1 {report.f1:.3f} (recall by kind: {kinds}), anomaly rate {report.anomaly_rate:.3f}, "
        f"{report.train_rows} training rows, {report.seconds:.1f} s"
    )


def is_trained(repository: Path, model: str = "fraud_scorer") -> bool:
    """The model has a version on disk (`export` writes a version whole, its reference included)."""
    return bool(versions.versions(repository, model))
