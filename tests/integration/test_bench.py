"""`pipeline bench` end to end on a tiny load: every figure is produced (no timing is asserted), and
what each throughput scenario's processes write is right: one output per event, the model's score."""

from __future__ import annotations

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

pytestmark = pytest.mark.integration


def test_a_tiny_bench_produces_every_figure(stack, tmp_path):
    options = runner.Options(
        events=400,
        naive_events=20,
        warmup=40,
        repetitions=1,
        warm_up_round=False,  # its figures are not compared
        http_rates=(20.0, 40.0),
        http_seconds=1.0,
        closed_concurrency=2,
        capacity_concurrency=4,
        triton_calls=20,
        committed_answer_rate=30.0,
        routed_http_rate=40.0,
        soak_s=6.0,
        soak_rate=50.0,
        state_entries=20_000,
        state_lookups=2_048,
        state_rebuild_entries=3_000,
        state_micro_entries=5_000,
        state_micro_batches=2,
        state_micro_rounds=2,
        state_restart_events=500,
        consumer_results=6_000,
        consumer_rate=300.0,
        consumer_seconds=3.0,
        replay_events=3_000,
        replay_scored_events=1_000,
        replay_live_events=500,
        replay_http_rate=20.0,
        burst_events=3_000,
        burst_max_workers=2,
    )

    figures = runner.run(
        stack.settings(), options, {"throughput", "http", "state", "consumers", "replay", "burst"}, stack=stack
    )
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
    http = written["http"]
    assert [f["offered"] for f in http["open_loop"]] == [20.0, 40.0]
    assert http["open_loop_answered_once_committed"]["offered"] == 30.0
    routed = http["routed"]
    assert set(routed) == {"canary10", "shadow100"} and all(r["open_loop"]["offered"] == 40.0 for r in routed.values())
    levels = [http["closed_loop"], *http["open_loop"], http["open_loop_answered_once_committed"]]
    levels += [level for r in routed.values() for level in r.values()]
    for level in [*levels, http["capacity"], http["overload"]]:
        assert level["requests"] > 0 and level["server_errors_5xx"] == 0
        assert level["p50"] is not None and level["p99.9"] >= level["p50"]
    assert http["direct_triton_one_row"]["calls"] == 20
    peer = http["request_response_open_loop"]
    assert [f["offered"] for f in peer] == [20.0, 40.0] and all(f["statuses"] == {"200": f["requests"]} for f in peer)
    assert all(f["cpu_ms_per_request"] > 0 for f in [*peer, *http["open_loop"]])
    figures = ("p50", "p99", "CPU per request")
    assert set(summary["http"]) == {
        *(f"bridge/request-response {figure}@{rate}" for figure in figures for rate in (20, 40)),
        *(f"{kind}/none {figure}" for kind in routed for figure in (*(f"{f}@40" for f in figures), "closed-loop ok/s")),
    }
    assert written["soak"]["rss_mib_samples"] and written["soak"]["rss_mib_baseline"] > 0
    state = written["state"]
    assert state["write"]["entries"] == 20_000 and state["write"]["peak_rss_mib"] > 0
    assert state["serve"]["lookups"] == 2_048 and state["serve"]["hits"] > 0
    assert state["rebuild"]["mode"] == "cold" and state["rebuild"]["entries"] == 3_000
    assert state["dedup_cost"]["dict_us_per_event"] > 0 and state["dedup_cost"]["store_us_per_event"] > 0
    headline = state["summary"]
    for figure in ("rss_mib", "disk_mib_per_million", "rebuild_entries_per_s", "dedup_store_over_dict"):
        assert headline[figure] > 0, figure
    assert headline["warm_restart_s"] >= 0
    restarted = state["restart"]
    assert restarted["full"]["restores"] == {"warm": 12, "cold": 0}, "every partition read back from its offset"
    assert restarted["empty"]["restores"] == {"warm": 0, "cold": 12}
    assert restarted["full"]["events"] == 500 and restarted["full"]["first_result_s"] > 0
    assert headline["worker_ready_s"] > 0 and headline["rss_mib_worker"] > 0
    assert "state 10M RSS MiB" not in summary["targets"], "the RSS target is for 10M entries"
    assert written["services_peak_rss_mib"]
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "pipeline-1w/passthrough-1p" in table and "direct Triton" in table and "at commit" in table
    assert "request-response, 40 req/s" in table and "CPU s/M ev" in table and "shadow100: open, 40 req/s" in table
    assert "dedup state on disk" in table and "cold rebuild" in table and "worker restarted on it" in table
    capacity, latency = written["consumers"]["fraud_capacity"], written["consumers"]["fraud_alert_latency"]
    assert capacity["results"] == 6_000 and capacity["results_per_s"] > 0 and capacity["alerts"] > 0
    assert latency["alerts"] > 0 and 0 < latency["p50"] <= latency["p99"]
    assert summary["consumers"]["fraud_consumers_for_two_workers"] >= 1, "against pipeline-2w in the same run"
    replayed = written["replay"]
    assert replayed["publish"]["published"] == 3_000 and replayed["publish"]["per_s"] > 0
    assert replayed["scored"]["events"] == 1_000 and replayed["scored"]["events_per_s"] > 0
    assert replayed["live_http"]["during_replay"]["errors"] == 0 and replayed["live_http"]["p99_ratio"] > 0
    assert "replay of a Parquet file of 3,000 requests" in table
    burst = written["burst"]
    assert burst["fixed_one"]["events"] == burst["fixed_max"]["events"] == burst["scaled"]["events"] == 3_000
    assert burst["fixed_max"]["workers"] == 2 and 1 <= burst["scaled"]["most_workers"] <= 2
    assert set(burst["scaled"]["scale_events"]) == {"up", "down"} and burst["ratios"]["scaled/fixed_one"] > 0
    assert summary["burst"]["seconds"]["scaled"] > 0
    assert "a burst of 3,000 requests" in table and "pipeline scale from one" in table
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
