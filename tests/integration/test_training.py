from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from pipeline.models import export, reference, train, versions
from pipeline.models.spec import load_spec_file
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def spec_features(config) -> list[str]:
    return load_spec_file(config).request_features


def checkout_of(model: str, repository: Path) -> Path:
    """The model's directory as a checkout ships it: its config and version 1's Python backend only."""
    shipped = Settings().triton.model_repository / model
    (repository / model / "1").mkdir(parents=True)
    shutil.copy(shipped / "config.pbtxt", repository / model / "config.pbtxt")
    backend = shipped / "1" / "model.py"
    if backend.is_symlink():  # another model's backend, linked as the checkout links it
        target = os.readlink(backend)
        shared = repository / model / "1" / target
        shared.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(backend.resolve(), shared)
        (repository / model / "1" / "model.py").symlink_to(target)
    else:
        shutil.copy(backend, repository / model / "1" / "model.py")
    return shipped / "config.pbtxt"


def test_training_reaches_the_holdout_auc_and_exports_torchscript(tmp_path):
    repository = tmp_path / "models"
    source = checkout_of("fraud_scorer", repository)

    report = train.train(repository)

    assert report.holdout_auc >= 0.90
    assert 0.01 < report.fraud_rate < 0.15
    model = torch.jit.load(str(repository / "fraud_scorer" / "1" / "model.pt"))
    scores = model(torch.zeros(4, 12))
    assert scores.shape == (4,) and bool(((scores >= 0) & (scores <= 1)).all())
    assert (repository / "fraud_scorer" / "1" / "metrics.json").exists()
    frozen = reference.load(repository / "fraud_scorer" / "1")
    assert set(frozen) == {*spec_features(source), "score"}, "every request feature and the score"
    assert len(frozen["amount"].edges) == 9 and frozen["amount"].percentiles is not None
    assert frozen["is_foreign"].percentiles is None, "a flag: two bins, no KS"
    assert report.version == 1


def test_each_training_writes_the_next_version_with_when_and_on_what_data(tmp_path):
    from pipeline.synthetic import cards

    repository = tmp_path / "models"
    checkout_of("fraud_scorer", repository)
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = train.train(repository, rows=20_000, epochs=4)
    bad = train.train(repository, rows=20_000, epochs=4, shuffle_labels=True)

    found = versions.versions(repository, "fraud_scorer")
    assert [v.number for v in found] == [1, 2] and (first.version, bad.version) == (1, 2)
    for version in found:
        assert (version.path / "model.py").read_bytes() == (repository / "fraud_scorer" / "1" / "model.py").read_bytes()
        assert (version.path / reference.FILE).exists()
        trained_at = datetime.fromisoformat(version.trained_at.replace("Z", "+00:00"))
        assert before <= trained_at <= datetime.now(UTC)
        assert orjson.loads((version.path / "metrics.json").read_bytes())["version"] == version.number
    # The fingerprint of what version 1 was fitted to, rebuilt from the same synthetic rows.
    spec = load_spec_file(repository / "fraud_scorer" / "config.pbtxt")
    table = cards.accounts(10_000)
    data = cards.transactions(20_000, table, seed=11)
    x = export.feature_matrix(spec, data.features, table.set_index("account_id").loc[data.account_id].reset_index())
    fitted = data.label.astype(np.float32)[:16_000]
    assert found[0].data_fingerprint == versions.fingerprint((x, fitted))
    assert found[1].data_fingerprint != found[0].data_fingerprint, "fitted to shuffled labels: other data"
    assert first.holdout_auc >= 0.85 and bad.holdout_auc < 0.65, (first.holdout_auc, bad.holdout_auc)


def test_the_anomaly_detector_reaches_f1_on_telemetry_it_was_not_trained_on(tmp_path):
    from pipeline.models import anomaly_training
    from pipeline.synthetic import telemetry

    repository = tmp_path / "models"
    source = checkout_of("anomaly_detector", repository)

    report = anomaly_training.train(repository, devices=300)

    assert report.f1 >= 0.8, report
    assert set(report.recall_by_kind) == set(telemetry.KINDS)
    # Fresh telemetry (other devices' days, another seed), scored by the exported TorchScript module
    # from raw values, as Triton scores it: 0.5 is the threshold.
    spec = load_spec_file(source)
    data = telemetry.readings(30_000, 300, seed=99)
    baselines = telemetry.devices(300).set_index("device_id").loc[data.device_id].reset_index()
    x = export.feature_matrix(spec, data.features, baselines)
    model = torch.jit.load(str(repository / "anomaly_detector" / "1" / "model.pt"))
    with torch.inference_mode():
        scores = model(torch.from_numpy(x)).numpy()
    assert ((scores >= 0) & (scores < 1)).all()
    _, _, f1 = anomaly_training.f1_scores(data.label, scores >= spec.threshold)
    assert f1 >= 0.8, f"F1 {f1:.3f} on fresh telemetry"
    frozen = reference.load(repository / "anomaly_detector" / "1")
    linked = repository / "anomaly_detector" / "1" / "model.py"
    assert linked.is_symlink() and linked.resolve() == (repository / "fraud_scorer" / "1" / "model.py").resolve()
    assert set(frozen) == {*spec.request_features, "score"}
