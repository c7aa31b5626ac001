"""`pipeline bench` end to end on a tiny load: every figure is produced (no timing is asserted), and
what each throughput scenario's processes write is right: one output per event, the model's score."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
import uuid

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.bench import load, peers, report, runner
from pipeline.bench.scenarios import runs_workers, throughput_scenarios
from pipeline.local import probe, traffic
from tests.integration.reference import reference_scores
from tests.integration.tiny_bench import TINY

pytestmark = pytest.mark.integration


def test_a_tiny_bench_produces_every_throughput_and_consumer_figure(stack, tmp_path):
    options = dataclasses.replace(TINY, soak_s=0.0)

    figures = runner.run(stack.settings(), options, {"throughput", "consumers"}, stack=stack)
    report.write_json(figures, tmp_path / "bench.json")
    report.chart(figures, tmp_path / "bench.png")
    table = report.table(figures)

    written = orjson.loads((tmp_path / "bench.json").read_bytes())
    assert written["machine"]["cores"] >= 1
    runs = written["throughput_runs"]
    assert list(runs) == [name for name, _ in throughput_scenarios(options.workers)]
    for name, each in runs.items():
        assert each[0]["events"] == (20 if name == "naive" else 400)
        assert each[0]["events_per_s"] > 0
        assert each[0]["peak_rss_mib"], f"{name}: peak RSS of its processes"
        path = each[0]["cpu_s_per_million"]["path"]
        assert "kafka" in path and ("tritonserver" in path) == (runs_workers(name) or name == "naive")
        assert each[0]["cpu_s_per_million"]["path_total"] > 0 and "load_generator" in each[0]["cpu_s_per_million"]
    assert len([p for p in runs["monolith-2p"][0]["cpu_s"]["path"] if p.startswith("bench-monolith-2p")]) == 2
    assert runs["model-mix-1w"][0]["events"] == 400, "both models' results counted"
    assert written["summary"]["ratios"]["model-mix-1w/pipeline-1w"] > 0
    # A 100% shadow: one committed shadow result per event, warm-up and timed; a canary alone: none.
    assert runs["pipeline-1w-shadow100"][0]["shadow_results"] == 440
    assert runs["pipeline-1w-canary10"][0]["shadow_results"] == 0
    # Tracing on, every request in a trace of its own (all, or 1% sampled), and the feature rows under
    # the TTL alone (none held): each against the worker without.
    for variant in ("pipeline-1w-traced", "pipeline-1w-traced-1pct", "pipeline-1w-ttl"):
        assert runs[variant][0]["events"] == 400
        assert written["summary"]["ratios"][f"{variant}/pipeline-1w"] > 0
    assert {"pipeline-1w-canary10/pipeline-1w", "pipeline-1w-shadow100/pipeline-1w"} <= set(
        written["summary"]["ratios"]
    )
    stages = runs["pipeline-1w"][0]["stages"]
    assert {"validate", "dedup", "features", "inference", "produce", "event:queue_wait"} <= set(stages)
    summary = written["summary"]
    # The steady drain rate needs outputs spread over time; a run this small may commit them at once.
    assert all(math.isfinite(v) and v > 0 for k, v in summary["ratios"].items() if not k.endswith("-steady"))
    assert all("steady_events_per_s" in run for each in runs.values() for run in each)
    assert set(summary["targets"]) >= {
        "pipeline-1w/passthrough-1p",
        "pipeline-2w/passthrough-2p",
        "pipeline-1w/monolith-1p",
        "pipeline-2w/monolith-2p",
        "pipeline-1w/monolith-1p per CPU s",
        "pipeline-1w/naive",
    }
    assert all(summary["cpu_s_per_million_median"][name] > 0 for name in runs)
    assert written["services_peak_rss_mib"]
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "pipeline-1w/passthrough-1p" in table and "CPU s/M ev" in table
    capacity, latency = written["consumers"]["fraud_capacity"], written["consumers"]["fraud_alert_latency"]
    assert capacity["results"] == 6_000 and capacity["results_per_s"] > 0 and capacity["alerts"] > 0
    assert latency["alerts"] > 0 and 0 < latency["p50"] <= latency["p99"]
    assert summary["consumers"]["fraud_consumers_for_two_workers"] >= 1, "against pipeline-2w in the same run"
    assert "fraud consumer, one process" in table and "alert latency" in table


def test_an_unknown_scenario_group_is_a_one_line_error():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--only", "nonsense"], capture_output=True, text=True
    )

    assert result.returncode != 0
    assert "unknown scenario group(s): nonsense" in result.stderr


# -- what the scenarios' processes write ------------------------------------------------------------------
PEER_EVENTS = 24
COPIES = ("passthrough", "passthrough-librdkafka")  # the limit: requests copied, no work
WORKER = "pipeline"  # the pipeline's own worker, as the pipeline-Nw scenarios run it
VOLATILE = ("scored_at", "latency_ms", "score")  # when and how fast; the score is compared within rounding


def _outputs(settings, count: int, timeout_s: float = 120) -> list[tuple[bytes, bytes]]:
    """(key, value) of every committed record on the (fresh) results topic, once `count` are in and
    a second more has brought no other."""
    consumer = Consumer(probe.consumer_config(settings))
    topic = settings.topics.results
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found: list[tuple[bytes, bytes]] = []
    deadline, settle_until = time.monotonic() + timeout_s, None
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            found += [(m.key(), m.value()) for m in consumer.consume(1000, 0.2) if m.error() is None]
            if settle_until is None and len(found) >= count:
                settle_until = time.monotonic() + 1.0
    finally:
        consumer.close()
    return found


def _run_each(stack, kinds, messages) -> dict[str, list[tuple[bytes, bytes]]]:
    """Each kind's process on topics of its own (started side by side, waited for in turn), fed
    `messages`; what each wrote to its results topic."""
    runs = {kind: load.fresh_topics(stack.settings(), f"check-{kind}") for kind in kinds}
    names = {kind: f"check-{kind}-{uuid.uuid4().hex[:6]}" for kind in kinds}
    try:
        started = {
            kind: stack.spawn(names[kind], own, *(["worker"] if kind == WORKER else ["bench-peer", kind]))
            for kind, own in runs.items()
        }
        for kind, process in started.items():
            stack.wait_for_log(names[kind], "worker_ready" if kind == WORKER else "peer_ready", process, 180)
        for own in runs.values():
            probe.publish(own, messages)
        return {kind: _outputs(own, len(messages)) for kind, own in runs.items()}
    finally:
        for name in names.values():
            stack.stop_process(name)
        for own in runs.values():
            load.drop_topics(own)


def test_each_peer_and_the_worker_write_one_output_per_event_with_the_models_score(stack):
    """Each process a throughput scenario runs (the pipeline's worker and every peer of
    pipeline/bench/peers.py), on topics of its own as the bench runs it, fed the same requests: the
    copies give back each request as it was; the others one result per event, keyed by it, with the
    score of the exported model run here on the features from Feast, and the worker's very record."""
    requests = traffic.valid_requests(PEER_EVENTS, prefix=f"peers-{uuid.uuid4().hex[:6]}-")
    messages = [traffic.message_for(r) for r in requests]
    kinds = (WORKER, *peers.PEERS)
    written = _run_each(stack, kinds, messages)

    for kind in COPIES:
        assert sorted(written[kind]) == sorted((m.key, m.value) for m in messages), kind
    event_ids = [str(r["event_id"]) for r in requests]
    expected = reference_scores(stack.settings(), requests)
    records = {}
    for kind in (k for k in kinds if k not in COPIES):
        assert sorted(key.decode() for key, _ in written[kind]) == sorted(event_ids), f"{kind}: one result each"
        results = {r["event_id"]: r for r in (orjson.loads(value) for _, value in written[kind])}
        scores = [results[e]["score"] for e in event_ids]
        np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0, err_msg=kind)
        assert [results[e]["entity"] for e in event_ids] == [r["entity"] for r in requests], kind
        assert all(r["label"] == ("fraud" if r["score"] >= 0.5 else "legit") for r in results.values()), kind
        records[kind] = results
    worker = records.pop(WORKER)
    for kind, results in records.items():
        for event_id in event_ids:
            ours, theirs = results[event_id], worker[event_id]
            assert abs(ours["score"] - theirs["score"]) <= 2e-6, (kind, ours, theirs)  # rounded to 6 places
            assert {k: v for k, v in ours.items() if k not in VOLATILE} == {
                k: v for k, v in theirs.items() if k not in VOLATILE
            }, f"{kind}: the worker's record"
