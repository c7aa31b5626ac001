"""The drift monitor's sliding windows, pure: per model, the last N values of each request feature
and of the score, compared with the training reference every M events; a feature whose PSI crosses a
level (warning, alert) upward raises one crossing, not one per event, until it falls back below.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.consumers.drift_stats import ks, level, psi
from pipeline.models.reference import Reference

_RANK = {"ok": 0, "warning": 1, "alert": 2}


@dataclass(frozen=True)
class Measured:
    feature: str
    psi: float
    ks: float | None  # the KS statistic D, for a continuous feature
    ks_p: float | None
    level: str
    events: int  # in the window


@dataclass
class FeatureWindow:
    reference: Reference
    size: int
    values: deque[float] = field(init=False)
    level: str = "ok"

    def __post_init__(self) -> None:
        self.values = deque(maxlen=self.size)


class ModelDrift:
    """One model's windows. `observe` each event's values; every `every` events once the windows are
    full, `measure` says each feature's drift and which features crossed a level upward."""

    def __init__(
        self, references: Mapping[str, Reference], size: int, every: int, warning: float, alert: float
    ) -> None:
        self.windows = {name: FeatureWindow(reference, size) for name, reference in references.items()}
        self.size, self.every, self.warning, self.alert = size, every, warning, alert
        self._since = 0

    def observe(self, values: Mapping[str, float]) -> bool:
        """Add one event's values (those the reference knows); True when it is time to measure."""
        for name, value in values.items():
            if (window := self.windows.get(name)) is not None:
                window.values.append(float(value))
        self._since += 1
        if self._since >= self.every and any(len(w.values) >= self.size for w in self.windows.values()):
            self._since = 0
            return True
        return False

    def measure(self) -> tuple[list[Measured], list[Measured]]:
        """(every full window's figures, those whose level rose since the last measure)."""
        measured, crossed = [], []
        for name, window in self.windows.items():
            if len(window.values) < self.size:
                continue
            values = np.fromiter(window.values, dtype=np.float64, count=len(window.values))
            value = psi(window.reference, values)
            statistic = ks(window.reference, values)
            now = level(value, self.warning, self.alert)
            figures = Measured(
                name,
                value,
                None if statistic is None else statistic[0],
                None if statistic is None else statistic[1],
                now,
                len(values),
            )
            measured.append(figures)
            if _RANK[now] > _RANK[window.level]:
                crossed.append(figures)
            window.level = now
        return measured, crossed
