from __future__ import annotations

import shutil

import pytest
import torch

from pipeline.models import reference, train
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
