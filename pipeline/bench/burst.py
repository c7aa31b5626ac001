"""The burst group of `pipeline bench`: a burst of requests into an idle pipeline, drained by one
worker, by a fixed maximum of workers (default: the CPUs `pipeline scale` may use), and by
`pipeline scale` starting at one with its own default ceiling; the time from the burst's first
request to its last result, against one worker's and against the better fixed count's, and the
supervisor's scale events until it is back at its minimum.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from prometheus_client.parser import text_string_to_metric_families

from pipeline.bench import load
from pipeline.bench.context import Context, Group, Report
from pipeline.local.stack import LocalStack, free_port
from pipeline.scaling import cpus
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Policy:
    """The supervisor's policy in the bench: drain within `drain_s`, back down after `down_window_s`;
    at most `max_workers` (None: its default, the CPUs it may use)."""

    max_workers: int | None = None
    drain_s: float = 5.0
    up_cooldown_s: float = 10.0
    down_window_s: float = 30.0


def run(context: Context) -> dict[str, Any]:
    """One burst, three ways: a fixed single worker, a fixed maximum, the supervisor between."""
    o, stack, settings = context.options, context.stack, context.settings
    messages = load.requests(o.burst_events, prefix=f"burst-{time.time_ns() % 10**10}-")
    top = o.burst_max_workers or cpus.count()
    one = fixed(stack, settings, 1, messages)
    log.info("bench_run", scenario="burst-1w", seconds=one["seconds"])
    most = fixed(stack, settings, top, messages) if top > 1 else one
    log.info("bench_run", scenario=f"burst-{top}w", seconds=most["seconds"])
    drained = scaled(stack, settings, Policy(max_workers=o.burst_max_workers), messages)
    log.info("bench_run", scenario="burst-scaled", seconds=drained["seconds"], events=drained["scale_events"])
    best = min(one, most, key=lambda run: run["seconds"])
    return {
        "events": o.burst_events,
        "cpus": cpus.count(),
        "fixed_one": one,
        "fixed_max": most,
        "fixed_best": best,
        "scaled": drained,
        "ratios": {  # drain time against one fixed worker's, and the better fixed count's, in this run
            "fixed_max/fixed_one": round(most["seconds"] / one["seconds"], 3),
            "scaled/fixed_one": round(drained["seconds"] / one["seconds"], 3),
            "scaled/fixed_best": round(drained["seconds"] / best["seconds"], 3),
        },
    }


def fixed(stack: LocalStack, settings: Settings, workers: int, messages: list[Any]) -> dict[str, Any]:
    """`workers` workers started and ready before the burst."""
    fresh = load.fresh_topics(settings, f"burst-{workers}w")
    names = [f"bench-burst-{workers}w-{i}" for i in range(workers)]
    counter = load.OutputCounter(fresh, fresh.topics.results)
    try:
        for name in names:
            stack.start_worker(fresh.updated(worker={"metrics_port": free_port()}), name)
        run = load.drive(fresh, counter, messages, timeout_s=300 + len(messages) / 200)
    finally:
        counter.close()
        for name in names:
            stack.stop_process(name)
        load.drop_topics(fresh)
    return run.figures() | {"workers": workers}


def scaled(stack: LocalStack, settings: Settings, policy: Policy, messages: list[Any]) -> dict[str, Any]:
    """`pipeline scale` from one ready worker: the burst drained, then until it is back at one."""
    fresh = load.fresh_topics(settings, "burst-scaled")
    port, run_dir = free_port(), stack.run_dir / "bench-burst-scale"
    shutil.rmtree(run_dir, ignore_errors=True)  # an earlier run's worker logs would read as ready
    own = fresh.updated(
        scaling={
            "min_workers": 1,
            **({"max_workers": policy.max_workers} if policy.max_workers is not None else {}),
            "drain_s": policy.drain_s,
            "up_cooldown_s": policy.up_cooldown_s,
            "down_window_s": policy.down_window_s,
            "interval_s": 1.0,
            "worker_metrics_port": 0,
            "run_dir": run_dir,
            "serve_port": port,
        },
        worker={"state_dir": run_dir / "state"},
    )
    counter = load.OutputCounter(fresh, fresh.topics.results)
    name = "bench-burst-scale"
    try:
        process = stack.spawn(name, own, "scale")
        _wait(lambda: _ready_workers(run_dir) >= 1, process, 120)
        run = load.drive(fresh, counter, messages, timeout_s=300 + len(messages) / 200)
        _wait(lambda: (_status(port) or {}).get("workers") == 1, process, policy.down_window_s + 120)
        back_at = time.time()
        events = _events(port)
    finally:
        counter.close()
        stack.stop_process(name, timeout_s=120)
        load.drop_topics(fresh)
    decisions = _decisions(stack.run_dir / f"{name}.log")
    return run.figures() | {
        "most_workers": max(d["desired_workers"] for d in decisions),
        "max_workers": decisions[0]["max_workers"],
        "saturated": sorted({d["saturated"] for d in decisions if d.get("saturated")}),
        "reasons": _changes(decisions),
        "scale_events": events,
        "back_to_one_after_s": round(back_at - run.done_at, 1),
        "policy": policy.__dict__,
    }


def _status(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/desired", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _events(port: int) -> dict[str, int]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    counts = {"up": 0, "down": 0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pipeline_scaling_events_total":
                counts[sample.labels["direction"]] = int(sample.value)
    return counts


def _decisions(log: Path) -> list[dict[str, Any]]:
    lines = (orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == "scale_decision"]


def _changes(decisions: list[dict[str, Any]]) -> list[str]:
    """The reason of each change of the desired count, and of each new saturation, in order."""
    said, count, cause = [], None, None
    for d in decisions:
        if d["desired_workers"] != count or (d.get("saturated") and d.get("saturated") != cause):
            said.append(f"{d['desired_workers']}: {d['reason']}")
        count, cause = d["desired_workers"], d.get("saturated")
    return said


def _ready_workers(run_dir: Path) -> int:
    return sum("worker_ready" in log.read_text(errors="replace") for log in run_dir.glob("*.log"))


def _wait(check: Any, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"pipeline scale exited ({process.returncode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"pipeline scale: not within {timeout_s:g} s")
        time.sleep(0.5)


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    burst = report["burst"]
    one, most, drained = burst["fixed_one"], burst["fixed_max"], burst["scaled"]
    events, policy, ratios = drained["scale_events"], drained["policy"], burst["ratios"]
    saturated = f", held as saturated ({', '.join(drained['saturated'])})" if drained.get("saturated") else ""
    return [
        f"a burst of {burst['events']:,} requests into an idle pipeline, first request to last result "
        f"({burst.get('cpus', '?')} CPUs):",
        f"  one worker {one['seconds']:.1f} s, {most['workers']} workers {most['seconds']:.1f} s "
        f"(ratio {ratios['fixed_max/fixed_one']:.2f})",
        f"  pipeline scale from one (drain target {policy['drain_s']:g} s, at most "
        f"{drained.get('max_workers', policy['max_workers'])}): {drained['seconds']:.1f} s (ratio "
        f"{ratios['scaled/fixed_one']:.2f} to one worker, {ratios.get('scaled/fixed_best', 0):.2f} to the better "
        f"fixed count), up to {drained['most_workers']} workers, {events['up']} scale-up(s) and "
        f"{events['down']} scale-down(s){saturated}, back at one {drained['back_to_one_after_s']:.0f} s after "
        "the last result",
    ]


GROUP = Group("burst", "burst", run, lines)
