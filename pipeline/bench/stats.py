"""Pure figures for the bench: percentiles, medians, ratios, and the worker's per-stage summary."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

PERCENTILES = (50, 90, 99, 99.9)


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {f"p{q:g}": float("nan") for q in PERCENTILES}
    values = np.asarray(latencies_s) * 1000
    return {f"p{q:g}": round(float(np.percentile(values, q)), 3) for q in PERCENTILES}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


_SUMMED = ("requests", "errors", "server_errors_5xx")
_PER_RUN = (
    *("achieved_per_s", "p50", "p90", "p99", "p99.9", "errors"),
    *("cpu_ms_per_request", "run_queue_wait_ms_per_request"),
)


def median_figures(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Repetitions of one HTTP load level → its figures: the median of each rate and percentile,
    requests and errors summed (an error in any repetition counts), each repetition kept."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if key in _SUMMED:
            merged[key] = sum(run[key] for run in runs)
        elif key == "statuses":
            merged[key] = dict(sum((Counter(run[key]) for run in runs), Counter()))
        elif key != "offered" and isinstance(value, float):
            merged[key] = median([run[key] for run in runs])
        elif isinstance(value, dict) and all(isinstance(v, float) for v in value.values()):
            merged[key] = {k: median([run[key][k] for run in runs if k in run[key]]) for k in value}
    merged["repetitions"] = [{key: run[key] for key in _PER_RUN if key in run} for run in runs]
    return merged


def steady_rate(timeline: Sequence[tuple[float, int]], total: int, low: float = 0.2, high: float = 0.8) -> float:
    """Outputs per second while a run's outputs went from `low` to `high` of `total`: the drain rate
    with the run's start (the backlog being published, consumers ramping up) and its tail left out."""
    start = next(((t, n) for t, n in timeline if n >= low * total), None)
    end = next(((t, n) for t, n in timeline if n >= high * total), None)
    if start is None or end is None or end[0] <= start[0]:
        return float("nan")
    return round((end[1] - start[1]) / (end[0] - start[0]), 1)


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("nan")


_PER_EVENT = {
    "pipeline_queue_wait_seconds": "event:queue_wait",
    "pipeline_event_latency_seconds": "event:consume_to_produce",
}
Totals = dict[str, tuple[float, float]]  # key → (sum of seconds, count)


def sample_total(metrics_text: str, sample: str, **labels: str) -> float:
    """The sum of one sample's values on a /metrics page, over the series with these labels."""
    return sum(
        value.value
        for family in text_string_to_metric_families(metrics_text)
        for value in family.samples
        if value.name == sample and all(value.labels.get(k) == v for k, v in labels.items())
    )


def stage_totals(metrics_texts: Sequence[str]) -> Totals:
    """Per-stage time sums and batch counts (and queue wait, consume → produce per event), summed over
    the workers' /metrics pages."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for text in metrics_texts:
        for family in text_string_to_metric_families(text):
            if family.name not in _PER_EVENT and family.name != "pipeline_stage_seconds":
                continue
            for sample in family.samples:
                key = _PER_EVENT.get(family.name) or sample.labels.get("stage", "")
                if sample.name.endswith("_sum"):
                    sums[key] += sample.value
                elif sample.name.endswith("_count"):
                    counts[key] += sample.value
    return {key: (sums[key], counts[key]) for key in sums}


def stage_summary(after: Totals, before: Totals | None = None) -> dict[str, dict[str, float]]:
    """Mean ms per batch of each stage (per event for `event:` keys) between two scrapes."""
    before = before or {}
    summary = {}
    for key in sorted(after):
        total = after[key][0] - before.get(key, (0.0, 0.0))[0]
        count = after[key][1] - before.get(key, (0.0, 0.0))[1]
        if count > 0:
            summary[key] = {"mean_ms": round(total / count * 1000, 3), "count": int(count)}
    return summary


def per_event_us(seconds: float, events: int) -> float:
    """Microseconds per event of `seconds` spent on `events`; NaN without events."""
    return round(seconds / events * 1e6, 3) if events else float("nan")


def per_million(amount: float, count: int) -> float:
    """`amount` (bytes, seconds) per million of `count` (entries); NaN without any."""
    return round(amount / count * 1e6, 1) if count else float("nan")


def state_summary(
    written: dict[str, Any],
    served: dict[str, Any],
    disk_bytes: int,
    rebuilt: dict[str, Any],
    micro: dict[str, Any],
    restarted: dict[str, Any],
) -> dict[str, Any]:
    """The state group's headline figures from its parts (pipeline/bench/state.py): the largest peak
    RSS of the process that wrote the store, the one that served from it and the worker restarted on
    it, disk per million entries, a restart's wait for its first lookup and a worker's till ready, the
    cold rebuild's rate, and the dedup cost per event against a dict."""
    entries = int(written["entries"])
    disk_mib = disk_bytes / 2**20
    return {
        "entries": entries,
        "rss_mib": max(written["peak_rss_mib"], served["peak_rss_mib"], restarted["full"]["peak_rss_mib"]),
        "rss_mib_worker": restarted["full"]["peak_rss_mib"],
        "rss_mib_worker_empty": restarted["empty"]["peak_rss_mib"],
        "worker_ready_s": restarted["full"]["ready_s"],
        "worker_ready_s_empty": restarted["empty"]["ready_s"],
        "worker_first_result_s": restarted["full"]["first_result_s"],
        "rss_mib_writer": written["rss_mib"],
        "rss_mib_serving": served["rss_mib"],
        "rss_mib_serving_over_baseline": round(served["rss_mib"] - served["rss_mib_before_open"], 1),
        "disk_mib": round(disk_mib, 1),
        "disk_mib_per_million": per_million(disk_mib, entries),
        "disk_bytes_per_entry": round(disk_bytes / entries, 1) if entries else float("nan"),
        "warm_restart_s": served["first_lookup_s"],
        "lookup_us_per_event": served["lookup_us_per_event"],
        "rebuild_entries_per_s": rebuilt["per_s"],
        "dedup_us_per_event_dict": micro["dict_us_per_event"],
        "dedup_us_per_event_store": micro["store_us_per_event"],
        "dedup_store_over_dict": ratio(micro["store_us_per_event"], micro["dict_us_per_event"]),
    }
