"""Drift statistics, pure: a feature's (or the score's) distribution over a window of events against
its training reference.

The reference is frozen from the training data (`models.reference`, written beside the model as
`reference.json`). Bins are never recomputed from a window, so two windows' PSI are comparable.
PSI = sum over bins of (window share - reference share) * ln(window share / reference share), shares
floored at 1e-4 so an empty bin counts without being infinite.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.models.reference import LEVELS, Reference

_FLOOR = 1e-4


def shares(reference: Reference, window: np.ndarray) -> np.ndarray:
    counts = np.bincount(
        np.searchsorted(np.asarray(reference.edges), np.asarray(window, dtype=np.float64), side="left"),
        minlength=len(reference.edges) + 1,
    )
    return counts / max(1, len(window))


def psi(reference: Reference, window: np.ndarray) -> float:
    actual = np.maximum(shares(reference, window), _FLOOR)
    expected = np.maximum(np.asarray(reference.expected), _FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: Reference, window: np.ndarray) -> tuple[float, float] | None:
    """(D, p-value) of the window against the reference's percentiles (its CDF, interpolated), or
    None for a discrete feature. The p-value is Kolmogorov's asymptotic one."""
    if reference.percentiles is None or len(window) == 0:
        return None
    x = np.sort(np.asarray(window, dtype=np.float64))
    n = len(x)
    cdf = np.interp(x, np.asarray(reference.percentiles), LEVELS)
    d = float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))
    return d, _kolmogorov_p(math.sqrt(n) * d)


def _kolmogorov_p(x: float) -> float:
    if x < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2 * total)))


def level(value: float, warning: float, alert: float) -> str:
    """ "alert" at or above `alert`, "warning" at or above `warning`, else "ok"."""
    return "alert" if value >= alert else "warning" if value >= warning else "ok"
