from __future__ import annotations

import shutil

import pytest
import torch

from pipeline.models import export, reference, train
from pipeline.models.spec import load_spec_file
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def spec_features(config) -> list[str]:
    return load_spec_file(config).request_features


def test_training_reaches_the_holdout_auc_and_exports_torchscript(tmp_path):
    repository = tmp_path / "models"
    source = Settings().triton.model_repository / "fraud_scorer" / "config.pbtxt"
    (repository / "fraud_scorer").mkdir(parents=True)
    shutil.copy(source, repository / "fraud_scorer" / "config.pbtxt")

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


def test_the_anomaly_detector_reaches_f1_on_telemetry_it_was_not_trained_on(tmp_path):
    from pipeline.models import anomaly_training
    from pipeline.synthetic import telemetry

    repository = tmp_path / "models"
    source = Settings().triton.model_repository / "anomaly_detector" / "config.pbtxt"
    (repository / "anomaly_detector").mkdir(parents=True)
    shutil.copy(source, repository / "anomaly_detector" / "config.pbtxt")

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
    assert set(frozen) == {*spec.request_features, "score"}
