"""The bench's summary: medians per scenario, ratios that pair like with like, and the targets.

Every throughput ratio divides scenarios of the same number of consumer processes (the pipeline's
`-1w` against a peer's `-1p`, `-2w` against `-2p`) or of the same CPU (events per CPU second of every
process on each one's path), and is named by the two scenarios it divides. What each scenario is:
docs/performance.md#throughput.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pipeline.bench.scenarios import (
    FEATURE_TTL,
    LIMIT,
    MONOLITH,
    PIPELINE,
    ROUTED,
    TRACED,
    mix_scenario,
    peer_scenario,
    pipeline_scenario,
    routed_scenario,
)
from pipeline.bench.stats import median, ratio

STATE_TARGET_ENTRIES = 10_000_000  # the RSS target is stated for a store of this many entries
HTTP_RATE = 500.0  # req/s: the open-loop level the HTTP targets are judged at
REPLAY_TARGET_EVENTS = 1_000_000  # the replay publishing target is stated for a file this large


@dataclass(frozen=True)
class Target:
    value: float
    at_least: bool  # a floor (ratios of rates); otherwise a ceiling (latencies, memory, latency ratios)

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.at_least else measured <= self.value


TARGETS = {
    "pipeline-1w/passthrough-1p": Target(0.5, True),
    "pipeline-2w/passthrough-2p": Target(0.5, True),
    "pipeline-1w/monolith-1p": Target(1.0, True),
    "pipeline-2w/monolith-2p": Target(1.0, True),
    "pipeline-1w/monolith-1p per CPU s": Target(0.9, True),
    "pipeline-1w/naive": Target(10.0, True),
    "http@500 p50 ms": Target(10.0, False),
    "http@500 p99 ms": Target(50.0, False),
    "bridge/request-response p50@500": Target(1.5, False),
    "bridge/request-response p99@500": Target(2.0, False),
    "state 10M RSS MiB": Target(400.0, False),
    "replay publish events/s": Target(100_000.0, True),
}


def path_cpu_s(run: dict[str, Any]) -> float:
    """CPU seconds of every process on one run's path (its consumers and the services it uses); the
    load generator's apart."""
    return float(sum(run.get("cpu_s", {}).get("path", {}).values()))


def summarise(
    runs: dict[str, list[dict[str, Any]]],
    http_figures: dict[str, Any] | None,
    state_figures: dict[str, Any] | None = None,
    consumer_figures: dict[str, Any] | None = None,
    replay_figures: dict[str, Any] | None = None,
    burst_figures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Medians per scenario, the ratios, and each target met or not."""
    rates = Rates.of(runs)
    ratios = _ratios(rates)
    http_summary = summarise_http(http_figures) if http_figures else {}
    measured = ratios | http_summary.get("judged", {})
    if state_figures and state_figures["write"]["entries"] >= STATE_TARGET_ENTRIES:
        measured["state 10M RSS MiB"] = state_figures["summary"]["rss_mib"]
    if replay_figures and replay_figures["events"] >= REPLAY_TARGET_EVENTS:
        measured["replay publish events/s"] = replay_figures["publish"]["per_s"]
    two_workers = _drain_rate(pipeline_scenario(2), rates.steady, rates.medians)
    return {
        "consumers": summarise_consumers(consumer_figures, two_workers) if consumer_figures else {},
        "replay": _replay(replay_figures) if replay_figures else {},
        "burst": _burst(burst_figures) if burst_figures else {},
        "events_per_s_median": rates.medians,
        "steady_events_per_s_median": rates.steady,
        "events_per_cpu_s_median": rates.per_cpu,
        "cpu_s_per_million_median": {name: ratio(1e6, rate) for name, rate in rates.per_cpu.items()},
        "ratios": ratios,
        "http": http_summary.get("ratios", {}),
        "targets": _targets(measured),
    }


@dataclass(frozen=True)
class Rates:
    """Each throughput scenario's median rates over its runs: events/s, steady events/s (the drain
    rate without a run's start and tail), events per CPU second of every process on its path."""

    medians: dict[str, float]
    steady: dict[str, float]
    per_cpu: dict[str, float]

    @classmethod
    def of(cls, runs: dict[str, list[dict[str, Any]]]) -> Rates:
        # A run too short to have a steady span has none (NaN), and NaN has no place in a sorted median.
        return cls(
            medians={name: median([r["events_per_s"] for r in rs]) for name, rs in runs.items()},
            steady={
                name: median([v for r in rs if math.isfinite(v := r.get("steady_events_per_s", math.nan))])
                for name, rs in runs.items()
            },
            per_cpu={
                name: median([r["events"] / cpu for r in rs if (cpu := path_cpu_s(r)) > 0 and "events" in r])
                for name, rs in runs.items()
            },
        )


def _ratios(rates: Rates) -> dict[str, float]:
    """Like with like, then the references of one process; the unmeasured left out."""
    counts = sorted({int(m[1]) for name in rates.medians if (m := re.fullmatch(rf"{PIPELINE}-(\d+)w", name))})
    ratios: dict[str, float] = {}
    for n in counts:
        ratios |= _like_with_like(rates, n)
    ratios |= _references(rates.medians)
    return {name: value for name, value in ratios.items() if math.isfinite(value)}


def _like_with_like(rates: Rates, n: int) -> dict[str, float]:
    """`n` pipeline workers against `n` processes of the limit and of the monolith, by rate, and
    against the monolith by CPU and by steady drain rate."""
    pipeline, monolith = pipeline_scenario(n), peer_scenario(MONOLITH, n)
    ratios: dict[str, float] = {}
    for kind in (LIMIT, MONOLITH):
        peer = peer_scenario(kind, n)
        if peer in rates.medians:
            ratios[f"{pipeline}/{peer}"] = ratio(rates.medians[pipeline], rates.medians[peer])
    if monolith in rates.per_cpu:
        ratios[f"{pipeline}/{monolith} per CPU s"] = ratio(rates.per_cpu[pipeline], rates.per_cpu[monolith])
    if monolith in rates.steady:
        # The drain rates, without the run's start (the backlog being published) and its tail.
        ratios[f"{pipeline}/{monolith} steady"] = ratio(rates.steady[pipeline], rates.steady[monolith])
    return ratios


def _references(medians: dict[str, float]) -> dict[str, float]:
    """One worker against the references of one process: the naive per-event loop, the copy on the
    pipeline's own client (librdkafka), a monolith without the pipeline's guarantee (no dedup, no
    transactions); and both models through one worker (a batch split by model: two feature reads,
    two Triton calls) against the fraud scorer alone, the same number of events; and one worker with a
    candidate routed to (a 10% canary: two Triton calls per batch; a 100% shadow: a second call for
    every event, its results written too) against it without one."""
    one = pipeline_scenario(1)
    if one not in medians:
        return {}
    ratios = {
        f"{one}/{peer}": ratio(medians[one], medians[peer])
        for peer in ("naive", "passthrough-librdkafka", "monolith-at-least-once")
        if peer in medians
    }
    if (mix := mix_scenario(1)) in medians:
        ratios[f"{mix}/{one}"] = ratio(medians[mix], medians[one])
    for kind in ROUTED:
        if (routed := routed_scenario(kind)) in medians:
            ratios[f"{routed}/{one}"] = ratio(medians[routed], medians[one])
    for traced in TRACED:
        if traced in medians:
            ratios[f"{traced}/{one}"] = ratio(medians[traced], medians[one])
    if FEATURE_TTL in medians:
        ratios[f"{FEATURE_TTL}/{one}"] = ratio(medians[FEATURE_TTL], medians[one])
    return ratios


def _targets(measured: dict[str, float]) -> dict[str, dict[str, Any]]:
    targets: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if name in measured and math.isfinite(measured[name]):
            value = measured[name]
            targets[name] = {"target": target.value, "measured": value, "met": target.met(value)}
    if "http@500 errors" in measured:
        errors = measured["http@500 errors"]
        targets["http@500 errors"] = {"target": 0, "measured": errors, "met": not errors}
    return targets


def _replay(replay_figures: dict[str, Any]) -> dict[str, Any]:
    return {
        "publish_events_per_s": replay_figures["publish"]["per_s"],
        "backfill_events_per_s": replay_figures["scored"]["events_per_s"],
        "live_http_p99_ratio": replay_figures["live_http"]["p99_ratio"],
    }


def _burst(burst_figures: dict[str, Any]) -> dict[str, Any]:
    ways = [way for way in ("fixed_one", "fixed_max", "fixed_best", "scaled") if way in burst_figures]
    seconds = {way: burst_figures[way]["seconds"] for way in ways}
    return {
        "seconds": seconds,
        "most_workers": burst_figures["scaled"]["most_workers"],
        "saturated": burst_figures["scaled"].get("saturated", []),
        "scale_events": burst_figures["scaled"]["scale_events"],
        "ratios": burst_figures["ratios"],
    }


def summarise_http(http_figures: dict[str, Any]) -> dict[str, Any]:
    """The bridge against the request-response peer at each open-loop rate (latency and CPU per
    request), a bridge whose model has a candidate against it, and the figures judged at HTTP_RATE."""
    bridge = {f["offered"]: f for f in http_figures["open_loop"]}
    peer = {f["offered"]: f for f in http_figures.get("request_response_open_loop") or []}
    ratios: dict[str, float] = {}
    for rate in sorted(bridge.keys() & peer.keys()):
        b, p = bridge[rate], peer[rate]
        for q in ("p50", "p99"):
            ratios[f"bridge/request-response {q}@{rate:g}"] = ratio(b[q], p[q])
        ratios[f"bridge/request-response CPU per request@{rate:g}"] = ratio(
            b.get("cpu_ms_per_request", math.nan), p.get("cpu_ms_per_request", math.nan)
        )
    # A canary or a shadow against the same bridge without a candidate, in the same rounds.
    for kind, routed in (http_figures.get("routed") or {}).items():
        closed = http_figures["closed_loop"]["achieved_per_s"]
        ratios[f"{kind}/none closed-loop ok/s"] = ratio(routed["closed_loop"]["achieved_per_s"], closed)
        if (plain := bridge.get(rate := routed["open_loop"]["offered"])) is not None:
            for q in ("p50", "p99"):
                ratios[f"{kind}/none {q}@{rate:g}"] = ratio(routed["open_loop"][q], plain[q])
            ratios[f"{kind}/none CPU per request@{rate:g}"] = ratio(
                routed["open_loop"].get("cpu_ms_per_request", math.nan), plain.get("cpu_ms_per_request", math.nan)
            )
    judged: dict[str, float] = {}
    at = bridge.get(HTTP_RATE)
    if at is not None:
        judged |= {"http@500 p50 ms": at["p50"], "http@500 p99 ms": at["p99"], "http@500 errors": at["errors"]}
    judged |= {k: v for k, v in ratios.items() if k.endswith(f"@{HTTP_RATE:g}") and "CPU" not in k}
    return {"ratios": ratios, "judged": judged}


def _drain_rate(scenario: str, steady: dict[str, float], medians: dict[str, float]) -> float:
    """The scenario's steady drain rate; in a run too short to have a steady span, its overall rate."""
    rate = steady.get(scenario, math.nan)
    return rate if math.isfinite(rate) else medians.get(scenario, math.nan)


def summarise_consumers(consumer_figures: dict[str, Any], two_workers_per_s: float) -> dict[str, Any]:
    """One fraud consumer's capacity against two workers' steady output (measured in the same run,
    NaN without it), and how many consumer processes keep up with them: they scale by partitions."""
    capacity = consumer_figures["fraud_capacity"]["results_per_s"]
    latency = consumer_figures["fraud_alert_latency"]
    share = ratio(capacity, two_workers_per_s)
    return {
        "fraud_results_per_s": capacity,
        "fraud_alert_latency_p50_ms": latency["p50"],
        "fraud_alert_latency_p99_ms": latency["p99"],
        "fraud_consumer/pipeline-2w steady": share,
        "fraud_consumers_for_two_workers": math.ceil(1 / share) if math.isfinite(share) and share > 0 else None,
    }
