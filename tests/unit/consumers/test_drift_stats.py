"""PSI and KS against frozen training bins: near zero without drift, large with it, bins never moved."""

from __future__ import annotations

import numpy as np

from pipeline.consumers.drift_stats import ks, level, psi
from pipeline.models.reference import Reference, reference_for


def test_deciles_give_ten_bins_of_a_tenth_each():
    reference = reference_for(np.random.default_rng(0).normal(size=100_000))
    assert len(reference.edges) == 9 and np.allclose(reference.expected, 0.1, atol=1e-3)
    assert reference.percentiles is not None and len(reference.percentiles) == 101


def test_a_flag_gets_two_bins_and_no_ks():
    flags = (np.random.default_rng(1).random(10_000) < 0.2).astype(float)
    reference = reference_for(flags)
    assert len(reference.expected) <= 3 and reference.percentiles is None
    assert ks(reference, flags[:1000]) is None
    assert psi(reference, flags[:1000]) < 0.02
    assert psi(reference, np.ones(1000)) > 1.0, "every flag set: a large shift"


def test_psi_over_1000_events_without_drift_stays_far_below_the_warning():
    rng = np.random.default_rng(2)
    reference = reference_for(rng.lognormal(3, 1, 100_000))
    values = [psi(reference, rng.lognormal(3, 1, 1000)) for _ in range(50)]
    assert np.mean(values) < 0.02 and max(values) < 0.1


def test_a_shifted_window_crosses_the_alert_threshold_and_ks_agrees():
    rng = np.random.default_rng(3)
    reference = reference_for(rng.normal(0, 1, 100_000))
    shifted = rng.normal(1.0, 1, 1000)
    assert psi(reference, shifted) >= 0.25
    d, p = ks(reference, shifted)
    assert d > 0.3 and p < 1e-6
    unshifted = [ks(reference, rng.normal(0, 1, 1000)) for _ in range(100)]
    assert np.mean([d for d, _ in unshifted]) < 0.035, "D of an unshifted window: ~0.027 at n = 1000"
    assert np.mean([p < 0.05 for _, p in unshifted]) < 0.15, "p < 0.05 about one time in twenty"


def test_a_reference_survives_json():
    reference = reference_for(np.arange(1000.0))
    assert Reference.from_json(reference.to_json()) == reference


def test_levels():
    assert [level(v, 0.1, 0.25) for v in (0.05, 0.1, 0.2, 0.25, 3)] == ["ok", "warning", "warning", "alert", "alert"]
