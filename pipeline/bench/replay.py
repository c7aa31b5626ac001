"""The replay group: `pipeline replay` from a Parquet file of distinct requests as `replay export`
writes them (`key`, `value`): its publishing rate with no backfill worker running; a part of the file
scored by a backfill worker (published → scored); and the live HTTP latency at a low rate while a
replay runs, against the same load without one, in interleaved rounds (docs/performance.md#replay).
"""

from __future__ import annotations

import resource
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from pipeline import topics
from pipeline.bench import load, rounds
from pipeline.bench.context import Context, Group, Report
from pipeline.bench.cpu import CpuMeter, per_million
from pipeline.bench.http_load import Bodies, measured, open_loop
from pipeline.bench.stats import median_figures, ratio, steady_rate
from pipeline.local.stack import free_port
from pipeline.replay import checkpoint
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

QUIET, REPLAYING = "replay-live-http", "replay-live-http-replaying"  # the live rounds' levels

_SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary())])
_TEMPLATES = 100_000  # distinct transactions; each is repeated with its own event_id


def write_requests(path: Path, count: int, prefix: str, rows_per_group: int = 100_000) -> Path:
    """`count` valid requests with distinct event_ids, keyed by account, to `path`."""
    templates = [(m.key, orjson.loads(m.value)) for m in load.requests(min(count, _TEMPLATES), prefix="template-")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, _SCHEMA, compression="zstd") as writer:
        for start in range(0, count, rows_per_group):
            keys, values = [], []
            for i in range(start, min(count, start + rows_per_group)):
                key, request = templates[i % len(templates)]
                request["event_id"] = f"{prefix}{i:08d}"
                keys.append(key)
                values.append(orjson.dumps(request))
            writer.write_table(pa.Table.from_pydict({"key": keys, "value": values}, schema=_SCHEMA))
    return path


def backfill_settings(settings: Settings, label: str, metrics_port: int) -> Settings:
    """A part's own backfill topics (created), checkpoints and backfill group, beside the run's live
    topics: what one part published is not scored in the next."""
    uid = f"{settings.worker.app_id}-{label}"
    fresh = settings.updated(
        topics={
            "backfill_requests": f"{uid}.backfill_requests",
            "backfill_results": f"{uid}.backfill_results",
            "replay_checkpoints": f"{uid}.replay_checkpoints",
        },
        replay={"backfill_app_id": f"{uid}-backfill", "backfill_metrics_port": metrics_port},
    )
    topics.apply(fresh)
    return fresh


def published(settings: Settings, replay_id: str) -> dict[str, float]:
    """What a finished replay's checkpoint says: requests published and the seconds it took."""
    state = checkpoint.latest(settings, replay_id)
    if state is None or not state.done:
        raise RuntimeError(f"replay {replay_id} did not complete")
    return {
        "published": state.counts["published"],
        "seconds": state.seconds,
        "per_s": round(state.counts["published"] / max(1e-6, state.seconds), 1),
    }


def drop_topics(settings: Settings) -> None:
    """Delete a run's backfill topics once it is measured (see `load.drop_topics`)."""
    names = [settings.topics.backfill_requests, settings.topics.backfill_results, settings.topics.replay_checkpoints]
    admin = topics.admin_client(settings)
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result()


def wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until `process` exits; raises when it fails or outlives the timeout."""
    began = time.monotonic()
    code = process.wait(timeout_s)
    if code != 0:
        raise RuntimeError(f"pipeline replay exited {code}")
    return time.monotonic() - began


def run(context: Context) -> dict[str, Any]:
    """The publishing rate, the backfill rate and the live HTTP latency, each on backfill topics of its own."""
    o = context.options
    settings = load.fresh_topics(context.settings, "replay")
    path = context.stack.run_dir / "bench-replay.parquet"
    write_requests(path, o.replay_events, prefix=f"{settings.worker.app_id}-")
    parts: list[Settings] = []

    def part(label: str) -> Settings:
        parts.append(backfill_settings(settings, label, free_port()))
        return parts[-1]

    try:
        publishing = _publish(context, part("publish"), path)
        log.info("bench_run", scenario="replay-publish", events_per_s=publishing["per_s"])
        scored = _scored(context, part("scored"), path, min(o.replay_scored_events, o.replay_events))
        log.info("bench_run", scenario="replay-scored", events_per_s=scored["events_per_s"])
        live = _live(context, part("live"), path, min(o.replay_live_events, o.replay_events))
        log.info("bench_run", scenario="replay-live-http", p99_ratio=live["p99_ratio"])
    finally:
        load.drop_topics(settings)
        for each in parts:
            drop_topics(each)
        path.unlink(missing_ok=True)
    return {"events": o.replay_events, "publish": publishing, "scored": scored, "live_http": live}


def _command(
    context: Context, settings: Settings, name: str, replay_id: str, path: Path, *options: str
) -> subprocess.Popen[bytes]:
    """`pipeline replay` of the file, started."""
    rejects = context.stack.run_dir / f"{name}.rejects.jsonl"
    return context.stack.spawn(
        name, settings, "replay", "--replay-id", replay_id, "--file", str(path), "--rejects", str(rejects), *options
    )


def _publish(context: Context, settings: Settings, path: Path) -> dict[str, Any]:
    """The whole file, no backfill worker running: the replay's own publishing rate, after an
    unrecorded run (a fresh broker's JIT compiler takes a million records to warm up)."""
    warm = _command(context, settings, "bench-replay-warmup", f"{settings.worker.app_id}-warmup", path)
    wait_exit(warm, timeout_s=900)
    name, replay_id = "bench-replay-publish", f"{settings.worker.app_id}-publish"
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command's CPU, once it is waited for
    process = _command(context, settings, name, replay_id, path)
    meter = CpuMeter(context.service_pids()).start()
    wall = wait_exit(process, timeout_s=900)
    cpu = meter.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu[name] = after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
    figures = published(settings, replay_id)
    return figures | {
        "command_s": round(wall, 3),  # with the command's start-up and the checkpoint read
        "cpu_s_per_million": per_million(cpu, int(figures["published"])),
    }


def _scored(context: Context, settings: Settings, path: Path, count: int) -> dict[str, Any]:
    """The first `count` requests of the file replayed with one backfill worker: from the
    command's start to the last result committed on the backfill results topic."""
    name = "bench-replay-backfill-worker"
    context.stack.start_worker(settings, name, backfill=True)
    counter = load.OutputCounter(settings, settings.topics.backfill_results)
    try:
        counter.expect(count)
        began = time.time()
        replay_id = f"{settings.worker.app_id}-scored"
        process = _command(context, settings, "bench-replay-scored", replay_id, path, "--limit", str(count))
        wait_exit(process, timeout_s=900)
        published_at = time.time()
        if not counter.wait(120 + count / 500):
            raise TimeoutError(f"{counter.count} of {count} replayed requests scored")
        seconds = counter.reached_at - began
        timeline = list(counter.timeline)
    finally:
        counter.close()
        context.stack.stop_process(name)
    return {
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_s": round(count / max(1e-6, seconds), 1),
        "steady_events_per_s": steady_rate(timeline, count),
        "published_after_s": round(published_at - began, 3),
    }


def _live(context: Context, settings: Settings, path: Path, count: int) -> dict[str, Any]:
    """A live worker and bridge with a backfill worker beside them: the open-loop HTTP latency at
    `replay_http_rate` with no replay, then while a replay of `count` requests is published and
    scored, in interleaved rounds (one unrecorded)."""
    o = context.options
    live = settings.updated(gateway={"port": free_port()}, worker={"metrics_port": free_port()})
    counter = load.OutputCounter(live, live.topics.backfill_results)
    bodies = Bodies(f"{live.worker.app_id}-http-", int(o.replay_http_rate * o.http_seconds * 2 * 4) + 100)
    names = ("bench-replay-live-worker", "bench-replay-live-gateway", "bench-replay-live-backfill")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes[names[0]] = context.stack.start_worker(live, names[0])
        processes[names[1]] = context.stack.start_gateway(live, names[1])
        processes[names[2]] = context.stack.start_worker(live, names[2], backfill=True)

        def quiet() -> dict[str, Any]:
            return measured(open_loop(live, bodies, o.replay_http_rate, o.http_seconds))

        levels: dict[str, rounds.Level] = {
            QUIET: lambda _: quiet(),
            REPLAYING: _Replaying(context, live, counter, path, count, quiet),
        }
        recorded = rounds.interleaved(o.repetitions, levels, o.warm_up_round)
    finally:
        counter.close()
        context.stop(processes)
    without, during = median_figures(recorded[QUIET]), median_figures(recorded[REPLAYING])
    return {
        "rate": o.replay_http_rate,
        "replay_events": count,
        "without_replay": without,
        "during_replay": during,
        "p99_ratio": ratio(during["p99"], without["p99"]),
        "p50_ratio": ratio(during["p50"], without["p50"]),
    }


@dataclass(frozen=True)
class _Replaying:
    """A level of the live rounds: `load_run` once a replay of `count` requests is being scored; then
    until it is all scored, so that the next run without a replay starts with no backfill work."""

    context: Context
    live: Settings
    counter: load.OutputCounter
    path: Path
    count: int
    load_run: Callable[[], dict[str, Any]]

    def __call__(self, repetition: int) -> dict[str, Any]:
        counter, count = self.counter, self.count
        before = counter.count
        counter.expect(before + count)
        name = f"bench-replay-live-{repetition + 1}"
        replay_id = f"{name}-{uuid.uuid4().hex[:6]}"
        command = _command(self.context, self.live, name, replay_id, self.path, "--limit", str(count))
        deadline = time.monotonic() + 60
        while counter.count == before and time.monotonic() < deadline:  # measured once scoring has begun
            time.sleep(0.05)
        figures = self.load_run()
        wait_exit(command, timeout_s=600)
        if not counter.wait(120 + count / 500):
            raise TimeoutError(f"{counter.count} replayed requests scored")
        return figures


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    replay = report["replay"]
    p, scored, live = replay["publish"], replay["scored"], replay["live_http"]
    quiet, busy = live["without_replay"], live["during_replay"]
    return [
        f"replay of a Parquet file of {replay['events']:,} requests:",
        f"  published {p['published']:,.0f} in {p['seconds']:.2f} s: {p['per_s']:,.0f} events/s "
        f"(the command, start-up included: {p['command_s']:.1f} s)",
        f"  published → scored by one backfill worker: {scored['events']:,} in {scored['seconds']:.1f} s, "
        f"{scored['events_per_s']:,.0f} events/s (steady {scored['steady_events_per_s']:,.0f})",
        f"  live HTTP at {live['rate']:g} req/s, p50 / p99 ms: {quiet['p50']:.1f} / {quiet['p99']:.1f} without a "
        f"replay, {busy['p50']:.1f} / {busy['p99']:.1f} during one of {live['replay_events']:,} "
        f"(p99 ratio {live['p99_ratio']:.2f})",
    ]


GROUP = Group("replay", "replay", run, lines)
