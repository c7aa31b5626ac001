"""The throughput group: each scenario (`scenarios.py`) drains a backlog of requests on topics of its
own, once per interleaved round; each run's rate, CPU per event on its path, peak RSS and, for the
pipeline's workers, their per-stage means (docs/performance.md#throughput)."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import secrets
import subprocess
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.bench import load, rounds, routed_model
from pipeline.bench.context import Context, Group, Report, scrape
from pipeline.bench.cpu import CpuMeter, per_million
from pipeline.bench.memory import RssSampler
from pipeline.bench.options import Options
from pipeline.bench.scenarios import (
    FEATURE_TTL,
    MIX,
    TRACED,
    peer_kind,
    routing_of,
    runs_workers,
    throughput_scenarios,
)
from pipeline.bench.stats import median, stage_summary, stage_totals, steady_rate
from pipeline.contract import TRACEPARENT
from pipeline.local import probe, traffic
from pipeline.local.stack import free_port
from pipeline.settings import Settings

Messages = list[traffic.Message]
Processes = dict[str, subprocess.Popen[bytes]]


@dataclass(frozen=True)
class Backlog:
    """The requests every scenario drains, warm-up and timed: for the fraud scorer, and mixed half
    and half with the anomaly detector's readings for the model-mix scenario."""

    warm: Messages
    timed: Messages
    mixed_warm: Messages
    mixed_timed: Messages

    @classmethod
    def make(cls, options: Options, accounts: int) -> Backlog:
        """`options.warmup` requests, and (`warm_every_account`) one for each of the `accounts` they do not
        name, before each timed run: a run measures workers that hold their feature rows
        (docs/performance.md#warm-up)."""
        prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        messages = load.requests(options.events + options.warmup, prefix=prefix)
        mixed = load.mixed(messages, prefix=f"{prefix}device-")
        w = options.warmup
        rest = load.every_account(messages[:w], accounts, f"{prefix}account-") if options.warm_every_account else []
        return cls(messages[:w] + rest, messages[w:], mixed[:w] + rest, mixed[w:])

    def of(self, scenario: str, repetition: int, options: Options) -> tuple[Messages, Messages]:
        """One run's warm-up and timed requests: the naive peer's fewer, the model mix's mixed, and
        half of them in the warm-up round."""
        naive = scenario == "naive"
        events = self.timed[: options.naive_events] if naive else self.timed
        warmup = self.warm[: max(1, options.warmup // 20)] if naive else self.warm
        if scenario.startswith(MIX):
            events, warmup = self.mixed_timed, self.mixed_warm
        if (share := TRACED.get(scenario)) is not None:
            warmup, events = traced(warmup, share), traced(events, share)
        if repetition == rounds.WARMUP:
            events = events[: max(1, len(events) // 2)]
        return warmup, events


def traced(messages: Messages, share: float) -> Messages:
    """The messages, each in a trace of its own (as from a producer that traces), `share` of the
    traces sampled: evenly spread, one in every 1/share."""
    every = round(1 / share)

    def traceparent(index: int) -> bytes:
        flags = "01" if index % every == 0 else "00"
        return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}".encode()

    return [dataclasses.replace(m, headers=((TRACEPARENT, traceparent(i)),)) for i, m in enumerate(messages)]


def run(context: Context) -> dict[str, list[dict[str, Any]]]:
    """Every scenario once per round; each scenario's recorded runs."""
    backlog = Backlog.make(context.options, context.settings.feast.accounts)
    rounds.quiet_collector()
    chosen = [(s, n) for s, n in throughput_scenarios(context.options.workers) if s in context.options.scenarios]
    scenarios = chosen if context.options.scenarios else throughput_scenarios(context.options.workers)
    routed = any(routing_of(scenario) is not None for scenario, _ in scenarios)
    with routed_model.bench_model(context.settings) if routed else nullcontext("") as model:
        levels = {scenario: _level(context, backlog, scenario, processes, model) for scenario, processes in scenarios}
        recorded = rounds.interleaved(context.options.repetitions, levels, context.options.warm_up_round)
    return {scenario: runs for scenario, runs in recorded.items() if runs}


def _level(context: Context, backlog: Backlog, scenario: str, processes: int, model: str) -> rounds.Level:
    def one(repetition: int) -> dict[str, Any] | None:
        if repetition == rounds.WARMUP and scenario == "naive":
            return None  # the naive peer (hundreds of times slower) has no warm-up round
        warmup, events = backlog.of(scenario, repetition, context.options)
        figures = _run(context, scenario, processes, warmup, events, model)
        return figures if repetition == rounds.WARMUP else figures | {"repetition": repetition}

    return one


def _run(context: Context, scenario: str, count: int, warmup: Messages, events: Messages, model: str) -> dict[str, Any]:
    """One run on topics of its own: `count` processes started, the warm-up drained, then the timed
    backlog, with the workers' stages between two scrapes. A routed scenario's worker scores the
    bench's `model` (requests name no model) under the run's own routing; its committed shadow
    results are counted."""
    settings = load.fresh_topics(context.settings, scenario)
    if scenario in TRACED:  # every span made and serialised as for a collector, then dropped
        settings = settings.updated(tracing={"enabled": True, "file": Path(os.devnull)})
    if scenario == FEATURE_TTL:
        settings = settings.updated(feast={"hold_until_materialised": False})
    shares = routing_of(scenario)
    if shares is not None:
        settings = routed_model.routed(settings, model, *shares)
    counter = load.OutputCounter(settings, settings.topics.results)
    processes: Processes = {}
    try:
        metrics_ports = _start(context, scenario, count, settings, processes)
        load.drive(settings, counter, warmup, timeout_s=300)
        before = stage_totals([scrape(p) for p in metrics_ports])
        drain = functools.partial(load.drive, settings, counter, events, timeout_s=120 + len(events) / 100)
        figures = _timed(context, scenario, processes, drain)
        after = stage_totals([scrape(p) for p in metrics_ports])
        if shares is not None:
            figures["shadow_results"] = _shadowed(settings)
    finally:
        counter.close()
        context.stop(processes)
        load.drop_topics(settings)
    return figures | {"stages": stage_summary(after, before) if metrics_ports else {}}


def _shadowed(settings: Settings) -> int:
    """The shadow results the run committed (its live results all are): read once the run is measured,
    from the start of its shadow topic to where it ends, as a reader during the run would be the
    broker's work too."""
    start = {tp: 0 for tp in probe.end_offsets(settings, [settings.topics.shadow_results])}
    return len(probe.read_to_end(settings, start))


def _start(context: Context, scenario: str, count: int, settings: Settings, processes: Processes) -> list[int]:
    """The scenario's consumer processes, into `processes` (stopped by the caller, whatever fails);
    the workers' metrics ports."""
    metrics_ports = []
    for i in range(count):
        port = free_port()
        own = settings.updated(worker={"metrics_port": port})
        name = f"bench-{scenario}-{i}"
        if runs_workers(scenario):
            processes[name] = context.stack.start_worker(own, name)
            metrics_ports.append(port)
        else:
            processes[name] = context.stack.spawn(name, own, "bench-peer", peer_kind(scenario))
            context.stack.wait_for_log(name, "peer_ready", processes[name])
    return metrics_ports


def _timed(context: Context, scenario: str, processes: Processes, drain: Callable[[], load.Run]) -> dict[str, Any]:
    """The timed backlog drained, with the CPU of every process on its path and their peak RSS."""
    sampler = RssSampler({name: p.pid for name, p in processes.items()}, interval_s=0.5)
    path = _path_meter(context, processes, triton=runs_workers(scenario) or scenario == "naive")
    # The bench's own process alone: the scenario's processes are its descendants.
    generator = CpuMeter({"load_generator": os.getpid()}, with_descendants=False).start()
    drained = drain()
    cpu = {"path": path.stop(), **generator.stop()}
    return _figures(drained, cpu, peaks=sampler.stop())


def _path_meter(context: Context, processes: Processes, triton: bool) -> CpuMeter:
    """A meter of the CPU of these processes and of the services on their path, started."""
    pids = {name: p.pid for name, p in processes.items()}
    services = context.service_pids()
    pids["kafka"] = services["kafka"]
    if triton:
        pids["tritonserver"] = services["tritonserver"]
    return CpuMeter(pids).start()


def _figures(run: load.Run, cpu: dict[str, Any], peaks: dict[str, float]) -> dict[str, Any]:
    path: dict[str, float] = cpu["path"]
    return run.figures() | {
        "steady_events_per_s": steady_rate(run.timeline, run.count),
        "peak_rss_mib": peaks,
        "cpu_s": cpu,
        "cpu_s_per_million": {
            "path": per_million(path, run.count),
            "path_total": per_million({"all": sum(path.values())}, run.count)["all"],
            "load_generator": per_million({"g": cpu.get("load_generator", 0.0)}, run.count)["g"],
        },
    }


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    runs, summary = report["throughput_runs"], report["summary"]
    if not runs:
        return []
    width = max(30, *(2 + len(_each(figures)) for figures in runs.values()))  # five runs and more fit
    lines = [
        f"{'throughput scenario':<24}{'median ev/s':>12}{'runs (ev/s)':>{width}}{'steady ev/s':>13}"
        f"{'CPU s/M ev':>12}{'load gen':>10}{'peak RSS MiB':>14}",
        *(_row(name, figures, summary, width) for name, figures in runs.items()),
        "  -1w/-2w: pipeline workers (model-mix: half the events for each model); -1p/-2p: peer processes.",
        "  CPU s/M ev: CPU seconds per million events",
        "  of every process on the path (consumers, broker, Triton where used); load gen apart.",
        "",
    ]
    lines += [f"ratio {name:<44}{value:>8.2f}" for name, value in summary["ratios"].items()]
    if stages := _pipeline_stages(runs):
        lines.append("")
        lines.append("pipeline stages (1 worker, last run): mean ms per batch; per event for event:*")
        lines += [f"  {name:<26}{figures['mean_ms']:>10.2f}" for name, figures in stages.items()]
    return lines


def _each(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['events_per_s']:,.0f}" for r in runs)


def _row(name: str, runs: list[dict[str, Any]], summary: dict[str, Any], width: int) -> str:
    each = _each(runs)
    rss = max((v for r in runs for v in r["peak_rss_mib"].values()), default=float("nan"))
    generated = (r.get("cpu_s_per_million", {}).get("load_generator", math.nan) for r in runs)
    generator = median([v for v in generated if math.isfinite(v)])
    steady = summary.get("steady_events_per_s_median", {}).get(name, math.nan)
    cpu = summary.get("cpu_s_per_million_median", {}).get(name, math.nan)
    return (
        f"{name:<24}{summary['events_per_s_median'][name]:>12,.0f}{each:>{width}}"
        f"{steady:>13,.0f}{cpu:>12,.1f}{generator:>10,.1f}{rss:>14,.0f}"
    )


def _pipeline_stages(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    figures = runs.get("pipeline-1w") or next((v for k, v in runs.items() if k.startswith("pipeline")), [])
    return figures[-1]["stages"] if figures else {}


GROUP = Group("throughput", "throughput_runs", run, lines)
