"""Sliding drift windows: measured every M events once full; a crossing is raised once, not per event."""

from __future__ import annotations

import numpy as np

from pipeline.consumers.drift_window import ModelDrift
from pipeline.models.reference import reference_for


def _drift(size: int = 1000, every: int = 100) -> ModelDrift:
    rng = np.random.default_rng(0)
    references = {
        "amount": reference_for(rng.lognormal(3, 1, 50_000)),
        "hour": reference_for(rng.integers(0, 24, 50_000)),
    }
    return ModelDrift(references, size=size, every=every, warning=0.1, alert=0.25)


def _feed(drift: ModelDrift, events: int, shift: float, seed: int) -> list:
    rng = np.random.default_rng(seed)
    measures = []
    for _ in range(events):
        values = {"amount": float(rng.lognormal(3, 1)) * shift, "hour": float(rng.integers(0, 24)), "other": 1.0}
        if drift.observe(values):
            measures.append(drift.measure())
    return measures


def test_nothing_is_measured_before_a_window_is_full_then_every_m_events():
    measures = _feed(_drift(), 1500, shift=1.0, seed=1)
    assert len(measures) == 6, "at events 1000, 1100, ..., 1500"
    assert all(m.events == 1000 for measured, _ in measures for m in measured)


def test_an_unshifted_stream_raises_no_crossing():
    measures = _feed(_drift(), 3000, shift=1.0, seed=2)
    assert not any(crossed for _, crossed in measures)
    assert max(m.psi for measured, _ in measures for m in measured) < 0.1


def test_a_shifted_feature_crosses_once_and_only_it():
    drift = _drift()
    _feed(drift, 1000, shift=1.0, seed=3)
    measures = _feed(drift, 3000, shift=3.0, seed=4)
    crossings = [c for _, crossed in measures for c in crossed]
    assert {c.feature for c in crossings} == {"amount"}
    assert [c.level for c in crossings] in (["warning", "alert"], ["alert"]), "each level once, rising"
    last = {m.feature: m for m in measures[-1][0]}
    assert last["amount"].psi >= 0.25 and last["amount"].ks is not None and last["amount"].ks_p < 1e-6
    assert last["hour"].psi < 0.1
