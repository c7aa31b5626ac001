"""A model's versions on disk (pipeline/models/versions.py), on real directories."""

from __future__ import annotations

import hashlib

import numpy as np
import orjson

from pipeline.models.versions import fingerprint, next_version, versions


def _version(root, model: str, name: str, metrics: dict | None = None, model_file: bool = True) -> None:
    path = root / model / name
    path.mkdir(parents=True)
    if model_file:
        (path / "model.pt").write_bytes(b"torchscript")
    if metrics is not None:
        (path / "metrics.json").write_bytes(orjson.dumps(metrics))


def test_versions_are_numbered_directories_with_a_model_lowest_first(tmp_path):
    _version(tmp_path, "fraud_scorer", "10", {"holdout_auc": 0.93, "trained_at": "2026-12-06T10:00:00Z"})
    _version(tmp_path, "fraud_scorer", "2", {"holdout_auc": 0.91, "data_fingerprint": "sha256:ab"})
    _version(tmp_path, "fraud_scorer", "1")
    _version(tmp_path, "fraud_scorer", "3", model_file=False)  # half-written: not a version
    _version(tmp_path, "fraud_scorer", "latest")
    (tmp_path / "fraud_scorer" / "config.pbtxt").write_text('name: "fraud_scorer"')

    found = versions(tmp_path, "fraud_scorer")

    assert [v.number for v in found] == [1, 2, 10]
    assert found[0].metrics == {} and found[2].trained_at == "2026-12-06T10:00:00Z"
    assert found[1].data_fingerprint == "sha256:ab" and found[1].metrics["holdout_auc"] == 0.91
    assert next_version(tmp_path, "fraud_scorer") == 11


def test_a_numbered_directory_without_a_model_is_filled_next_and_a_new_model_starts_at_one(tmp_path):
    _version(tmp_path, "anomaly_detector", "1")
    _version(tmp_path, "anomaly_detector", "2", model_file=False)  # as a checkout ships 1/ with model.py only
    assert next_version(tmp_path, "anomaly_detector") == 2
    assert next_version(tmp_path, "no_such_model") == 1
    assert versions(tmp_path, "no_such_model") == []


def test_the_fingerprint_is_the_sha256_of_dtype_shape_and_bytes():
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    labels = np.array([0, 1, 0, 1], dtype=np.int64)
    oracle = hashlib.sha256()
    for array in (features, labels):
        oracle.update(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())

    assert fingerprint([features, labels]) == f"sha256:{oracle.hexdigest()}"
    assert fingerprint([np.asfortranarray(features), labels]) == fingerprint([features, labels]), "layout aside"
    changed = features.copy()
    changed[3, 2] += 1
    assert fingerprint([changed, labels]) != fingerprint([features, labels])
    assert fingerprint([features.reshape(3, 4), labels]) != fingerprint([features, labels]), "the shape counts"
