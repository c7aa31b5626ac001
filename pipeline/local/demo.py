"""`pipeline demo`: the whole pipeline on the local stack with a demo stream, then a summary."""

from __future__ import annotations

import time
import uuid

import httpx
import numpy as np
import orjson
import typer

from pipeline.local import probe, traffic
from pipeline.local.stack import LocalStack
from pipeline.settings import Settings


def run(base: Settings, events: int, keep_running: bool) -> None:
    stack = LocalStack.from_settings(base)
    settings = stack.settings(base)
    stack.prepare(settings)
    if keep_running:
        stack.up()
        _stream(settings, events)
        _http_call(settings)
        typer.echo(f"\nstack left running (logs in {stack.run_dir}); stop it with `make down`")
        return
    with stack.services(settings):
        started = []
        try:
            for name, start in (("worker", stack.start_worker), ("gateway", stack.start_gateway)):
                if not stack.is_running(name):
                    start(settings)
                    started.append(name)
            _stream(settings, events)
            _http_call(settings)
        finally:
            for name in reversed(started):
                stack.stop_process(name)


def _stream(settings: Settings, events: int) -> None:
    demo = traffic.mixed(events, prefix=f"demo-{uuid.uuid4().hex[:8]}-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    typer.echo(
        f"publishing {len(demo.messages):,} requests: {len(demo.requests):,} distinct, "
        f"{demo.duplicates:,} repeats, {sum(demo.expected_dead_letters.values()):,} malformed"
    )
    began = time.time()
    sent_at = probe.publish(settings, demo.messages)
    expected_dead = sum(demo.expected_dead_letters.values())
    collected = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= len(demo.requests) and len(c.dead_letters) >= expected_dead,
        timeout_s=max(120.0, events / 100),
    )
    latencies = [collected.result_times_ms[e] - sent_at[e] for e in collected.result_times_ms if e in sent_at]
    last = max(collected.result_times_ms.values(), default=int(began * 1000)) / 1000
    flagged = sum(1 for rs in collected.results.values() if rs[0]["label"] == "fraud")
    rows = [
        ("requests published", f"{len(demo.messages):,}"),
        ("scored (distinct results)", f"{collected.distinct_results:,} of {len(demo.requests):,}"),
        ("repeats dropped", f"{demo.duplicates:,} ({collected.repeated_results} repeated results)"),
        ("dead-lettered", f"{len(collected.dead_letters):,}  {dict(collected.dead_letter_codes())}"),
        ("fraud flagged", f"{flagged:,} ({flagged / max(1, collected.distinct_results):.1%})"),
        ("throughput", f"{collected.distinct_results / max(1e-3, last - began):,.0f} events/s"),
        ("latency p50 / p99", f"{_pct(latencies, 50):.0f} ms / {_pct(latencies, 99):.0f} ms (produce → result)"),
    ]
    typer.echo("\n".join(f"  {name:<28} {value}" for name, value in rows))
    if collected.distinct_results != len(demo.requests) or collected.repeated_results:
        raise typer.Exit(1)


def _http_call(settings: Settings) -> None:
    request = traffic.valid_requests(1, prefix=f"http-demo-{uuid.uuid4().hex[:8]}-", seed=99)[0]
    url = f"http://127.0.0.1:{settings.gateway.port}/v1/predict"
    response = httpx.post(url, json=request, timeout=30)
    typer.echo(f"\nPOST {url}\n  {orjson.dumps(request).decode()}\n→ {response.status_code} {response.text}")


def _pct(values: list[int], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
