"""`pipeline demo`: the whole pipeline on the local stack with a demo stream, then a summary: what was
scored, dropped and dead-lettered, the alerts the fraud consumer raised (the stream, then two patterns
its rules are for: a burst of one card's payments, a risky payment retried) and the drift monitor's."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import httpx
import numpy as np
import orjson
import typer

from pipeline.local import probe, traffic
from pipeline.local.probe import Collected
from pipeline.local.stack import LocalStack
from pipeline.settings import Settings


def run(base: Settings, events: int, keep_running: bool) -> None:
    stack = LocalStack.from_settings(base)
    settings = stack.settings(base)
    stack.prepare(settings)
    if keep_running:
        stack.up()
        _run_stream(settings, events)
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
            started += stack.start_consumers(settings)
            _run_stream(settings, events)
            _http_call(settings)
        finally:
            for name in reversed(started):
                stack.stop_process(name)


def _run_stream(settings: Settings, events: int) -> None:
    alerts_start = probe.end_offsets(settings, [settings.topics.alerts, settings.topics.drift_alerts])
    demo, collected = _stream(settings, events)
    expected = _patterns(settings, demo, collected)
    _show_alerts(settings, alerts_start, expected)


def _stream(settings: Settings, events: int) -> tuple[traffic.Traffic, Collected]:
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
    return demo, collected


BURST = 20  # one card's payments within seconds: twice the velocity rule's default count
RETRIES = 3  # a risky payment tried again: with the original, more than repeated_high_scores needs


def _patterns(settings: Settings, demo: traffic.Traffic, collected: Collected) -> dict[str, object]:
    """Publish a burst of one account's payments and three retries of the stream's riskiest payment;
    the (rule, account) alerts they must raise."""
    first = next(iter(demo.requests.values()))
    riskiest = max(collected.results.values(), key=lambda rs: rs[0]["score"])[0]
    retried = demo.requests[riskiest["event_id"]]
    messages = [traffic.message_for(first | {"event_id": f"{first['event_id']}-burst-{i}"}) for i in range(BURST)]
    messages += [
        traffic.message_for(retried | {"event_id": f"{retried['event_id']}-retry-{i}"}) for i in range(RETRIES)
    ]
    probe.publish(settings, messages)
    account = "account_id"
    typer.echo(
        f"\nthen {BURST} payments of account {first['entity'][account]} within a second, and "
        f"{RETRIES} retries of account {retried['entity'][account]}'s riskiest payment (score {riskiest['score']:.3f})"
    )
    expected = {"velocity": first["entity"][account]}
    if riskiest["score"] >= settings.consumers.fraud.high_score:
        expected["repeated_high_scores"] = retried["entity"][account]
    return expected


def _show_alerts(settings: Settings, start: dict, expected: dict[str, object]) -> None:
    def raised(alerts: list[dict[str, object]]) -> bool:
        found = {(a.get("rule"), a.get("account_id")) for a in alerts}
        return all(pair in found for pair in expected.items())

    alerts = probe.read_json(settings, start, raised, timeout_s=60, settle_s=2)
    fraud = [a for a in alerts if a.get("kind") == "fraud"]
    drift = [a for a in alerts if a.get("kind") != "fraud"]
    rules = Counter(str(a["rule"]) for a in fraud)
    typer.echo(f"  {'fraud alerts':<28} {len(fraud):,}  {dict(sorted(rules.items()))}")
    for rule in sorted(rules):
        example = next(a for a in fraud if a["rule"] == rule)
        typer.echo(f"    {rule:<22} {example['reason']}")
    typer.echo(
        f"  {'drift alerts':<28} {len(drift):,}" + ("" if drift else "  (the stream is drawn like the training data)")
    )
    for alert in drift[:5]:
        typer.echo(f"    {alert.get('feature')}: {alert.get('level')}, PSI {alert.get('psi')}")
    if example := next((a for a in fraud if a["rule"] == "repeated_high_scores"), None):
        typer.echo(f"  one alert on {settings.topics.alerts}:\n    {orjson.dumps(example).decode()}")
    if not raised(alerts):
        typer.echo(f"missing alerts: expected {expected}", err=True)
        raise typer.Exit(1)


def _http_call(settings: Settings) -> None:
    request = traffic.valid_requests(1, prefix=f"http-demo-{uuid.uuid4().hex[:8]}-", seed=99)[0]
    url = f"http://127.0.0.1:{settings.gateway.port}/v1/predict"
    response = httpx.post(url, json=request, timeout=30)
    typer.echo(f"\nPOST {url}\n  {orjson.dumps(request).decode()}\n→ {response.status_code} {response.text}")


def _pct(values: list[int], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
