from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.anomaly_training import best_threshold, f1_scores


def test_f1_of_a_known_confusion():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    flagged = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    precision, recall, f1 = f1_scores(labels, flagged)
    assert (precision, recall) == (0.75, 0.75) and f1 == pytest.approx(0.75)
    assert f1_scores(labels, np.zeros(10, dtype=bool)) == (0.0, 0.0, 0.0)


def test_the_threshold_separates_errors_when_they_separate():
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.uniform(0, 1, 950), rng.uniform(2, 3, 50)])
    labels = np.concatenate([np.zeros(950, dtype=int), np.ones(50, dtype=int)])
    threshold, f1 = best_threshold(labels, errors)
    assert 1 <= threshold <= 2 and f1 == 1.0
