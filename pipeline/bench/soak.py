"""The soak (with --soak S): one worker takes a steady rate of distinct requests for S seconds with a
short dedup window, so that its state plateaus within the run, its RSS sampled; flat means the
median of the second tenth of the samples and that of the last within 10% (docs/performance.md#soak)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from pipeline import topics
from pipeline.bench import load
from pipeline.bench.context import Context, Group, Report
from pipeline.bench.memory import RssSampler
from pipeline.bench.stats import median, ratio
from pipeline.local import traffic
from pipeline.local.stack import free_port
from pipeline.settings import Settings

NAME = "bench-soak-worker"


def run(context: Context) -> dict[str, Any]:
    o = context.options
    settings = load.fresh_topics(context.settings, "soak")
    settings = settings.updated(worker={"metrics_port": free_port(), "dedup_window_s": o.soak_dedup_window_s})
    process = context.stack.start_worker(settings, NAME)
    sampler = RssSampler({"worker": process.pid}, interval_s=min(5.0, o.soak_s / 30))
    stop = threading.Event()
    producer = threading.Thread(target=_steady_load, args=(settings, o.soak_rate, stop), daemon=True)
    producer.start()
    try:
        time.sleep(o.soak_s)
    finally:
        stop.set()
        producer.join(30)
        sampler.stop()
        context.stop([NAME])
        load.drop_topics(settings)
    return {
        "seconds": o.soak_s,
        "rate_per_s": o.soak_rate,
        "dedup_window_s": o.soak_dedup_window_s,
        **_growth(sampler.samples["worker"]),
    }


def _growth(samples: list[float]) -> dict[str, Any]:
    """Pure: skip the first tenth (warm-up, the dedup window filling), compare the next tenth with the last."""
    window = max(1, len(samples) // 10)
    baseline, final = median(samples[window : 2 * window]), median(samples[-window:])
    growth = ratio(final - baseline, baseline)
    return {
        "rss_mib_samples": [round(s, 1) for s in samples],
        "rss_mib_baseline": round(baseline, 1),
        "rss_mib_final": round(final, 1),
        "growth": growth,
        "flat_within_10pct": abs(growth) <= 0.10,
    }


def _steady_load(settings: Settings, rate: float, stop: threading.Event) -> None:
    """Valid, distinct requests at `rate` per second, in 100 ms slices, until `stop`."""
    producer = topics.requests_producer(settings, {"linger.ms": 5})
    prefix = f"soak-{uuid.uuid4().hex[:6]}-"
    pool = traffic.valid_requests(10_000, prefix="pool-")
    sent = 0
    began = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - began) * rate)
        for i in range(sent, due):
            message = traffic.message_for(pool[i % len(pool)] | {"event_id": f"{prefix}{i:09d}"})
            producer.produce(settings.topics.requests, message.value, key=message.key)
        sent = max(sent, due)
        producer.poll(0)
        stop.wait(0.1)
    producer.flush(30)


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    s = report["soak"]
    return [
        f"soak {s['seconds']:g} s at {s['rate_per_s']:g} ev/s: worker RSS {s['rss_mib_baseline']} → "
        f"{s['rss_mib_final']} MiB ({s['growth']:+.1%}), flat within 10%: {s['flat_within_10pct']}",
    ]


GROUP = Group("soak", "soak", run, lines)
