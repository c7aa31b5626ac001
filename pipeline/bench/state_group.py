"""The state group: the worker's dedup store at a full window's size, each memory figure from a
process of its own (`pipeline bench-state`, pipeline/bench/state.py), then a worker restarted on it
against one on an empty state, the dedup cost per event against a dict, and a cold rebuild of one
partition from the broker (docs/performance.md#state)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from pipeline.bench import load, state
from pipeline.bench.context import Context, Group, Report, scrape
from pipeline.bench.memory import RssSampler, status_mib
from pipeline.bench.stats import sample_total, state_summary
from pipeline.local.stack import free_port
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

RESTORES = "pipeline_state_restores_total"


def run(context: Context) -> dict[str, Any]:
    o = context.options
    root = context.stack.run_dir / "bench-state"
    shutil.rmtree(root, ignore_errors=True)
    # The topics and app id of the worker restarted on the store: what it is written for.
    restart = load.fresh_topics(context.settings, "state").updated(worker={"state_dir": str(root)})
    try:
        store = root / restart.worker.app_id
        written = _process(context, "write", store, restart, entries=o.state_entries)
        disk = state.disk_bytes(store / "rocksdb")
        served = _process(context, "serve", store, restart, entries=o.state_entries, lookups=o.state_lookups)
        log.info("bench_run", scenario="state", rss_mib=served["rss_mib"], disk_mib=round(disk / 2**20))
        restarted = _restart(context, restart, root)
        shutil.rmtree(store)
        micro = _micro(context, root / "micro")
        rebuilt = _rebuild(context, root / "rebuild")
    finally:
        load.drop_topics(restart)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "write": written,
        "serve": served,
        "restart": restarted,
        "disk_bytes": disk,
        "rebuild": rebuilt,
        "dedup_cost": micro,
        "summary": state_summary(written, served, disk, rebuilt, micro, restarted),
    }


def _process(context: Context, role: str, directory: Path, settings: Settings, **options: int) -> dict[str, Any]:
    """Run `pipeline bench-state ROLE DIR` to its end; its figures."""
    name = f"bench-state-{role}"
    directory.mkdir(parents=True, exist_ok=True)
    flags = [part for key, value in options.items() for part in (f"--{key}", str(value))]
    process = context.stack.spawn(name, settings, "bench-state", role, str(directory), *flags)
    try:
        returncode = process.wait(timeout=300 + options.get("entries", 0) / 10_000)
    finally:
        context.stack.stop_process(name)
    if returncode != 0:
        raise RuntimeError(f"{name} exited {returncode}; see {context.stack.run_dir / name}.log")
    return dict(orjson.loads((directory / f"{role}.json").read_bytes()))


def _micro(context: Context, directory: Path) -> dict[str, Any]:
    o = context.options
    return _process(
        context,
        "micro",
        directory,
        context.settings,
        entries=o.state_micro_entries,
        batches=o.state_micro_batches,
        rounds=o.state_micro_rounds,
    )


def _restart(context: Context, restart: Settings, root: Path) -> dict[str, Any]:
    """A worker started on the full store (every partition warm, nothing to read back), and, as the
    baseline, one on an empty state directory and topics of its own: from start to ready (every
    partition's state restored), its first result and its RSS through a run of requests."""
    empty = load.fresh_topics(context.settings, "state-empty").updated(worker={"state_dir": str(root / "empty")})
    try:
        baseline = _restarted_worker(context, empty, "bench-state-empty")
    finally:
        load.drop_topics(empty)
    full = _restarted_worker(context, restart, "bench-state-worker")
    return {"empty": baseline, "full": full, "ready_s_over_empty": round(full["ready_s"] - baseline["ready_s"], 3)}


def _restarted_worker(context: Context, settings: Settings, name: str) -> dict[str, Any]:
    own = settings.updated(worker={"metrics_port": free_port()})
    counter = load.OutputCounter(own, own.topics.results)
    began = time.monotonic()
    process = context.stack.start_worker(own, name)
    try:
        ready_s = time.monotonic() - began
        restores = scrape(own.worker.metrics_port)
        sampler = RssSampler({name: process.pid}, interval_s=0.5)
        requests = load.requests(context.options.state_restart_events, name)
        run = load.drive(own, counter, requests, timeout_s=300)
        peaks = sampler.stop()
        rss = status_mib(process.pid, "VmRSS") or 0.0
    finally:
        counter.close()
        context.stop([name])
    first = run.timeline[0][0] - run.produced_at if run.timeline else float("nan")
    return {
        "ready_s": round(ready_s, 3),
        "restores": {m: int(sample_total(restores, RESTORES, mode=m)) for m in ("warm", "cold")},
        "first_result_s": round(first, 3),
        "events": run.count,
        "events_per_s": round(run.events_per_s, 1),
        "peak_rss_mib": peaks[name],
        "rss_mib": round(rss, 1),
    }


def _rebuild(context: Context, directory: Path) -> dict[str, Any]:
    """A cold `changelog.Restorer` rebuild of one partition of a fresh results topic, in this process."""
    entries = context.options.state_rebuild_entries
    settings = load.fresh_topics(context.settings, "state")
    try:
        state.publish_results(settings, entries)
        figures = asyncio.run(state.rebuild(settings, directory, entries))
    finally:
        load.drop_topics(settings)
    log.info("bench_run", scenario="state-rebuild", entries_per_s=figures["per_s"])
    return figures


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    figures = report["state"]
    s, w, v, m = figures["summary"], figures["write"], figures["serve"], figures["dedup_cost"]
    return [
        f"dedup state on disk, {s['entries']:,} entries ({w['mean_result_bytes']}-byte results), each its own process:",
        f"  RSS writer {w['rss_mib']:.0f} MiB (peak {w['peak_rss_mib']:.0f}), serving {v['rss_mib']:.0f} MiB "
        f"(peak {v['peak_rss_mib']:.0f}; {v['rss_mib_before_open']:.0f} before opening the store)",
        f"  disk {s['disk_mib']:,.0f} MiB, {s['disk_mib_per_million']:,.1f} MiB per million entries",
        f"  writes {w['writes_per_s']:,} entries/s, compactions settled {w['settle_s']:.1f} s later; "
        f"CPU {w['cpu_us_per_entry']:.1f} µs per entry, all threads ({w['making_us_per_entry']:.1f} making it)",
        f"  warm restart: open + first lookup {s['warm_restart_s']:.3f} s; then {v['lookups']:,} lookups "
        f"({v['hits']:,} hits) at {s['lookup_us_per_event']:.2f} µs each",
        f"  worker restarted on it: ready {s['worker_ready_s']:.2f} s after its start ("
        f"{s['worker_ready_s_empty']:.2f} s on an empty state), first result {s['worker_first_result_s']:.3f} s "
        f"after the first request, peak RSS {s['rss_mib_worker']:.0f} MiB ({s['rss_mib_worker_empty']:.0f} empty) "
        f"through {figures['restart']['full']['events']:,} requests",
        f"  cold rebuild of one partition: {figures['rebuild']['entries']:,} results at "
        f"{s['rebuild_entries_per_s']:,.0f} entries/s",
        f"  dedup per event, {m['entries']:,} held, batches of 1,024, {m['hit_share']:.0%} hits (read + write):",
        f"    dict  {m['dict_us_per_event']:>7.2f} µs ({m['dict_read_us_per_event']:.2f} + "
        f"{m['dict_write_us_per_event']:.2f})",
        f"    store {m['store_us_per_event']:>7.2f} µs ({m['store_read_us_per_event']:.2f} + "
        f"{m['store_write_us_per_event']:.2f}), {s['dedup_store_over_dict']:.1f} times the dict's",
    ]


GROUP = Group("state", "state", run, lines)
