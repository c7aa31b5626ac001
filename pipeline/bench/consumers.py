"""The consumer group: one `pipeline consumers fraud` process on topics and a group of its own, its
capacity (results per second through a backlog) and its alert latency (result committed → alert
visible to a read_committed reader) at a steady rate of results (docs/performance.md#consumers).
Its load: `consumer_load.py`."""

from __future__ import annotations

import math
import time
from typing import Any

import structlog

from pipeline import topics
from pipeline.bench import consumer_load, load
from pipeline.bench.context import Context, Group, Report, scrape
from pipeline.bench.cpu import CpuMeter, per_million
from pipeline.bench.memory import RssSampler
from pipeline.bench.stats import percentiles_ms, sample_total, steady_rate
from pipeline.local.stack import free_port
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

CONSUMED, ALERTS = "pipeline_consumer_results_total", "pipeline_alerts_total"


def run(context: Context) -> dict[str, Any]:
    """One fraud consumer process: its capacity through a backlog, its alert latency at a steady rate."""
    o = context.options
    capacity = _capacity(context, o.consumer_results)
    log.info("bench_run", scenario="consumer-capacity", results_per_s=capacity["results_per_s"])
    latency = _latency(context, o.consumer_rate, o.consumer_seconds)
    log.info("bench_run", scenario="consumer-latency", p50_ms=latency["p50"], p99_ms=latency["p99"])
    return {"fraud_capacity": capacity, "fraud_alert_latency": latency}


def _capacity(context: Context, count: int) -> dict[str, Any]:
    """A backlog of `count` committed results, then one consumer from the beginning: results/s
    while its count went from 20% to 80% of them (start-up and tail apart), by its own metric."""
    settings = load.fresh_topics(context.settings, "consumer")
    group = f"{settings.worker.app_id}-fraud"
    own = settings.updated(consumers={"metrics_port": free_port()})
    _backlog(own, count, group)
    name = "bench-consumer-fraud"
    try:
        process = context.stack.start_consumer(own, "fraud", name, "--group-id", group, "--from-beginning")
        meter = CpuMeter({name: process.pid}).start()
        sampler = RssSampler({name: process.pid}, interval_s=0.5)
        timeline = _read_through(own.consumers.metrics_port, count)
        cpu, peaks = meter.stop(), sampler.stop()
        alerts = int(sample_total(scrape(own.consumers.metrics_port), ALERTS, kind="fraud"))
    finally:
        _stop(context, name, settings, group)
    rate = steady_rate(timeline, count)
    if not math.isfinite(rate):  # read too fast for two scrapes past a fifth: the whole run's rate
        rate = round(count / max(1e-3, timeline[-1][0] - timeline[0][0]), 1)
    return {
        "results": count,
        "results_per_s": rate,
        "alerts": alerts,
        "cpu_s_per_million": per_million(cpu, count)[name],
        "peak_rss_mib": peaks[name],
    }


def _backlog(settings: Settings, count: int, group: str) -> None:
    """`count` results committed to the results topic, 10,000 a transaction."""
    rows = consumer_load.results(settings, count, prefix=f"{group}-")
    publisher = consumer_load.ResultsPublisher(settings, topics.partition_count(settings, settings.topics.results))
    for start in range(0, count, 10_000):
        publisher.commit(rows[start : start + 10_000])


def _read_through(port: int, count: int) -> list[tuple[float, int]]:
    """(epoch s, results read) by the consumer's metric each second, until it has read `count`."""
    timeline: list[tuple[float, int]] = []
    deadline = time.monotonic() + 120 + count / 1000
    while (read := int(sample_total(scrape(port), CONSUMED, consumer="fraud"))) < count:
        timeline.append((time.time(), read))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fraud consumer read {read} of {count} results")
        time.sleep(1.0)  # a scrape costs the consumer CPU: not too often
    timeline.append((time.time(), read))
    return timeline


def _latency(context: Context, rate: float, seconds: float) -> dict[str, Any]:
    """One consumer fed `rate` results/s for `seconds`: each alert's latency from the commit of
    the result that decided it to its being read by a read_committed reader."""
    settings = load.fresh_topics(context.settings, "consumer-latency")
    group = f"{settings.worker.app_id}-fraud"
    own = settings.updated(consumers={"metrics_port": free_port()})
    rows = consumer_load.results(own, int(rate * seconds), prefix=f"{group}-", seed=12)
    publisher = consumer_load.ResultsPublisher(own, topics.partition_count(own, own.topics.results))
    name = "bench-consumer-fraud-latency"
    reader: consumer_load.AlertReader | None = None
    try:
        context.stack.start_consumer(own, "fraud", name, "--group-id", group)
        reader = consumer_load.AlertReader(own)
        began = time.monotonic()
        committed = consumer_load.steady(publisher, rows, rate)
        achieved = len(rows) / (time.monotonic() - began)
        reader.wait_quiet(quiet_s=3.0, timeout_s=60)
        latencies = consumer_load.alert_latencies_s(reader.seen, committed)
    finally:
        if reader is not None:
            reader.close()
        _stop(context, name, settings, group)
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(achieved, 1),
        "seconds": seconds,
        "alerts": len(latencies),
        **percentiles_ms(latencies),
    }


def _stop(context: Context, name: str, settings: Settings, group: str) -> None:
    """The consumer stopped; its run's topics dropped, and its own (its tables' changelogs, Faust's
    leader topic), named for its group."""
    context.stack.stop_process(name)
    load.drop_topics(settings)
    admin = topics.admin_client(settings)
    names = [topic for topic in admin.list_topics(timeout=10).topics if topic.startswith(f"{group}-")]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    c, a = report["consumers"]["fraud_capacity"], report["consumers"]["fraud_alert_latency"]
    lines = [
        "fraud consumer, one process:",
        f"  capacity {c['results_per_s']:,.0f} results/s through a backlog of {c['results']:,} "
        f"({c['alerts']:,} alerts; CPU {c['cpu_s_per_million']:,.1f} s per million; "
        f"peak RSS {c['peak_rss_mib']:.0f} MiB)",
        f"  alert latency at {a['achieved_per_s']:,.0f} results/s, result committed → alert read "
        f"({a['alerts']:,} alerts): p50 {a['p50']:.1f} ms, p90 {a['p90']:.1f}, p99 {a['p99']:.1f}",
    ]
    summary = report["summary"].get("consumers", {})
    if (needed := summary.get("fraud_consumers_for_two_workers")) is not None:
        lines.append(
            f"  {summary['fraud_consumer/pipeline-2w steady']:.2f} of two workers' steady output: "
            f"{needed} consumer process{'es' if needed > 1 else ''} keep up with them"
        )
    return lines


GROUP = Group("consumers", "consumers", run, lines)
