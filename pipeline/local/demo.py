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
from pipeline.synthetic import telemetry


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


TELEMETRY_DEVICES = 100  # machines reporting in the demo, each a reading per simulated five minutes


def _run_stream(settings: Settings, events: int) -> None:
    topics = [settings.topics.alerts, settings.topics.drift_alerts, settings.topics.anomaly_alerts]
    alerts_start = probe.end_offsets(settings, topics)
    demo, collected = _stream(settings, events)
    expected = _patterns(settings, demo, collected)
    devices = _telemetry(settings, max(TELEMETRY_DEVICES, events // 10))
    _show_alerts(settings, alerts_start, expected, devices)


def _telemetry(settings: Settings, count: int) -> int:
    """Publish `count` readings of TELEMETRY_DEVICES machines beside the transactions; print how the
    anomaly detector did against the known labels; the number of devices flagged."""
    prefix = f"demo-telemetry-{uuid.uuid4().hex[:8]}-"
    data = telemetry.readings(count, TELEMETRY_DEVICES, seed=41)
    requests = traffic.telemetry_requests(count, prefix, devices=TELEMETRY_DEVICES, seed=41)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    typer.echo(
        f"\npublishing {count:,} telemetry readings of {TELEMETRY_DEVICES} machines "
        f"({data.label.mean():.1%} anomalous, labels known)"
    )
    probe.publish(settings, [traffic.message_for(r) for r in requests])
    ids = [str(r["event_id"]) for r in requests]
    collected = probe.collect(settings, start, lambda c: all(e in c.results for e in ids), timeout_s=120)
    scored = sum(1 for e in ids if e in collected.results)
    if scored != count:
        typer.echo(f"only {scored:,} of {count:,} readings scored", err=True)
        raise typer.Exit(1)
    flagged = np.array([collected.results[e][0]["label"] == "anomaly" for e in ids])
    hits = int((flagged & (data.label == 1)).sum())
    typer.echo(
        f"  {'readings scored':<28} {scored:,} of {count:,}\n"
        f"  {'flagged anomalous':<28} {int(flagged.sum()):,}: {hits:,} of the {int(data.label.sum()):,} "
        f"injected anomalies, {int(flagged.sum()) - hits:,} false alarms"
    )
    return len(set(data.device_id[flagged].tolist()))


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
    burst_account = traffic.object_field(first, "entity")[account]
    retried_account = traffic.object_field(retried, "entity")[account]
    typer.echo(
        f"\nthen {BURST} payments of account {burst_account} within a second, and "
        f"{RETRIES} retries of account {retried_account}'s riskiest payment (score {riskiest['score']:.3f})"
    )
    expected = {"velocity": burst_account}
    if riskiest["score"] >= settings.consumers.fraud.high_score:
        expected["repeated_high_scores"] = retried_account
    return expected


def _show_alerts(settings: Settings, start: dict, expected: dict[str, object], devices: int) -> None:
    def raised(alerts: list[dict[str, object]]) -> bool:
        found = {(a.get("rule"), a.get("account_id")) for a in alerts}
        episodes = {a.get("device_id") for a in alerts if a.get("kind") == "anomaly"}
        return all(pair in found for pair in expected.items()) and len(episodes) >= devices

    alerts = probe.read_json(settings, start, raised, timeout_s=120, settle_s=2)
    fraud = [a for a in alerts if a.get("kind") == "fraud"]
    anomaly = [a for a in alerts if a.get("kind") == "anomaly"]
    drift = [a for a in alerts if a.get("kind") == "drift"]
    latest = {str(a["alert_id"]): a for a in anomaly}  # each episode as it stands (follow-ups replace it)
    typer.echo("\nalerts raised")
    rules = Counter(str(a["rule"]) for a in fraud)
    typer.echo(f"  {'fraud alerts':<28} {len(fraud):,}  {dict(sorted(rules.items()))}")
    for rule in sorted(rules):
        example = next(a for a in fraud if a["rule"] == rule)
        typer.echo(f"    {rule:<22} {example['reason']}")
    counted = sum(int(a["follow_up"]["count"]) for a in latest.values())
    typer.echo(
        f"  {'anomaly alerts':<28} {len(latest):,} (one per machine with an anomaly; {counted:,} further "
        f"anomalous readings in their follow-ups)"
    )
    typer.echo(f"  {'drift alerts':<28} {len(drift):,}")
    for model in sorted({str(a.get("model")) for a in drift}):
        features = ", ".join(f"{a.get('feature')} ({a.get('level')})" for a in drift if a.get("model") == model)
        typer.echo(f"    {model}: {features}")
    if any(a.get("model") == "anomaly_detector" for a in drift):
        typer.echo("    (the telemetry covers a few hours, the training data days: its hours and loads differ)")
    if shown := next((a for a in fraud if a["rule"] == "repeated_high_scores"), None):
        typer.echo(f"  one alert on {settings.topics.alerts}:\n    {orjson.dumps(shown).decode()}")
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
