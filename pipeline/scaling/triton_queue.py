"""Triton's queue time per request, from its own metrics endpoint: a shared bottleneck read beside
the lag (docs/scaling.md#saturation).

Triton counts, per model and version, the requests it served (`nv_inference_request_success`) and
the microseconds they waited in its scheduler's queue before a model instance took them
(`nv_inference_queue_duration_us`). Between two readings, the queue time per request of the model
that waited most is what more workers cannot shorten: when it grows as workers are added, the rate
needs Triton instances or GPUs, not workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

_QUEUE, _SERVED = "nv_inference_queue_duration_us", "nv_inference_request_success"


@dataclass(frozen=True)
class Counters:
    """Per model: (requests served, microseconds queued), cumulative."""

    models: Mapping[str, tuple[float, float]]


def counters(text: str) -> Counters:
    """Pure: the counters from Triton's `/metrics` text, summed over each model's versions."""
    served: dict[str, float] = {}
    queued: dict[str, float] = {}
    for family in text_string_to_metric_families(text):  # a counter's samples are named <family>_total
        if family.name not in (_SERVED, _QUEUE):
            continue
        into = served if family.name == _SERVED else queued
        for sample in family.samples:
            if sample.name.startswith(family.name) and (model := sample.labels.get("model")):
                into[model] = into.get(model, 0.0) + sample.value
    return Counters({m: (served[m], queued.get(m, 0.0)) for m in served})


def queue_s(before: Counters, after: Counters) -> float | None:
    """Pure: the longest queue time per request (seconds) of any model between two readings; None
    where no model served a request meanwhile (or Triton restarted: its counters went back)."""
    worst = None
    for model, (served, queued) in after.models.items():
        was = before.models.get(model)
        if was is None or served <= was[0] or queued < was[1]:
            continue
        per_request = (queued - was[1]) / (served - was[0]) / 1e6
        worst = per_request if worst is None else max(worst, per_request)
    return worst


class TritonQueue:
    """Reads Triton's metrics; `read()` is the queue time per request since the last reading (None:
    not known, the endpoint unreachable or nothing served)."""

    def __init__(self, url: str, timeout_s: float = 0.5) -> None:
        # One connection kept; a short timeout: an unreachable Triton costs the decision loop little.
        self._url, self._client = url, httpx.Client(timeout=timeout_s)
        self._last: Counters | None = None

    def read(self) -> float | None:
        try:
            response = self._client.get(self._url)
            response.raise_for_status()
        except httpx.HTTPError:
            self._last = None
            return None
        last, self._last = self._last, counters(response.text)
        return queue_s(last, self._last) if last is not None else None

    def close(self) -> None:
        self._client.close()
