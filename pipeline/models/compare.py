"""Two versions' results for the same events, compared, pure: what `pipeline models compare` prints
for a stable version and its shadow (and `replay diff` for a backtest against the live results).

Events are joined by `event_id`; only events both versions scored count. For those: how many, the
share whose label agrees, the label flips in each direction, and the score shift (candidate minus
stable) as mean, mean absolute, p95 absolute and largest absolute value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    model: str
    stable: str  # version
    candidate: str
    events: int  # scored by both
    only_stable: int  # scored by the stable version only (not shadowed, or its shadow result missing)
    only_candidate: int
    agreement: float  # share of `events` with the same label
    flips: dict[str, int] = field(default_factory=dict)  # "legit -> fraud": count
    shift_mean: float = 0.0
    shift_mean_abs: float = 0.0
    shift_p95_abs: float = 0.0
    shift_max_abs: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stable": self.stable,
            "candidate": self.candidate,
            "events": self.events,
            "only_stable": self.only_stable,
            "only_candidate": self.only_candidate,
            "agreement": self.agreement,
            "flips": dict(sorted(self.flips.items())),
            "score_shift": {
                "mean": self.shift_mean,
                "mean_abs": self.shift_mean_abs,
                "p95_abs": self.shift_p95_abs,
                "max_abs": self.shift_max_abs,
            },
        }

    def table(self) -> str:
        rows = [
            ("events scored by both", f"{self.events:,}"),
            ("scored by one only", f"{self.only_stable:,} stable, {self.only_candidate:,} candidate"),
            ("labels agree", f"{self.agreement:.2%}"),
            *((f"flips {flip}", f"{n:,}") for flip, n in sorted(self.flips.items())),
            ("score shift mean", f"{self.shift_mean:+.4f}"),
            (
                "score shift |mean| / p95 / max",
                f"{self.shift_mean_abs:.4f} / {self.shift_p95_abs:.4f} / {self.shift_max_abs:.4f}",
            ),
        ]
        width = max(len(name) for name, _ in rows)
        head = f"{self.model}: version {self.candidate} against stable version {self.stable}"
        return "\n".join([head, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def compare(
    model: str,
    stable: Mapping[str, Mapping[str, Any]],
    candidate: Mapping[str, Mapping[str, Any]],
) -> Comparison:
    """`stable` and `candidate`: each version's results by `event_id` (the contract's result
    records: `model_version`, `score`, `label`)."""
    both = sorted(stable.keys() & candidate.keys())
    versions = [_version(stable.values()), _version(candidate.values())]
    flips: Counter[str] = Counter()
    agree = 0
    shifts = np.empty(len(both), dtype=np.float64)
    for i, event_id in enumerate(both):
        old, new = stable[event_id], candidate[event_id]
        if old["label"] == new["label"]:
            agree += 1
        else:
            flips[f"{old['label']} -> {new['label']}"] += 1
        shifts[i] = float(new["score"]) - float(old["score"])
    absolute = np.abs(shifts)
    return Comparison(
        model,
        versions[0],
        versions[1],
        events=len(both),
        only_stable=len(stable) - len(both),
        only_candidate=len(candidate) - len(both),
        agreement=agree / len(both) if both else 0.0,
        flips=dict(flips),
        shift_mean=float(shifts.mean()) if both else 0.0,
        shift_mean_abs=float(absolute.mean()) if both else 0.0,
        shift_p95_abs=float(np.percentile(absolute, 95)) if both else 0.0,
        shift_max_abs=float(absolute.max()) if both else 0.0,
    )


def _version(results: Iterable[Mapping[str, Any]]) -> str:
    """The version the results name ("mixed: 1, 2" when they name several; "" when none)."""
    found = sorted({str(r["model_version"]) for r in results})
    return found[0] if len(found) == 1 else f"mixed: {', '.join(found)}" if found else ""
