"""The bench's summary: like-with-like ratios, CPU per event, the HTTP peer, the targets."""

import math

from pipeline.bench.scenarios import peer_kind, runs_workers, throughput_scenarios
from pipeline.bench.stats import state_summary
from pipeline.bench.summary import summarise


def _run(events_per_s: float, cpu_s: dict[str, float] | None = None, steady: float = math.nan) -> dict:
    run = {"events": 100_000, "events_per_s": events_per_s, "steady_events_per_s": steady}
    if cpu_s is not None:
        run["cpu_s"] = {"path": cpu_s, "load_generator": 1.0}
    return run


RUNS = {
    "passthrough-1p": [_run(v) for v in (20_000, 24_000, 22_000)],
    "passthrough-2p": [_run(30_000)],
    "passthrough-librdkafka": [_run(40_000)],
    "pipeline-1w": [_run(12_000, {"pipeline-1w-0": 6.0, "kafka": 3.0, "tritonserver": 1.0}, steady=18_000)],
    "pipeline-2w": [_run(v) for v in (11_000, 18_000, 13_000)],
    "model-mix-1w": [_run(10_800)],
    "pipeline-1w-canary10": [_run(11_400)],
    "pipeline-1w-shadow100": [_run(v) for v in (9_000, 7_200, 8_400)],
    "monolith-1p": [_run(20_000, {"monolith-1p-0": 5.0, "kafka": 3.0}, steady=30_000)],
    "monolith-2p": [_run(26_000)],
    "monolith-at-least-once": [_run(30_000)],
    "naive": [_run(100)],
}


def test_every_ratio_pairs_the_same_number_of_processes_or_the_same_cpu():
    summary = summarise(RUNS, None)

    assert summary["ratios"] == {
        "pipeline-1w/passthrough-1p": 0.545,  # 12,000 / the median 22,000
        "pipeline-1w/monolith-1p": 0.6,
        "pipeline-1w/monolith-1p per CPU s": 0.8,  # 10,000 ev per CPU s against 12,500
        "pipeline-1w/monolith-1p steady": 0.6,
        "pipeline-2w/passthrough-2p": 0.433,
        "pipeline-2w/monolith-2p": 0.5,
        "pipeline-1w/naive": 120.0,
        "pipeline-1w/passthrough-librdkafka": 0.3,
        "pipeline-1w/monolith-at-least-once": 0.4,
        "model-mix-1w/pipeline-1w": 0.9,  # both models, half each, against the fraud scorer alone
        "pipeline-1w-canary10/pipeline-1w": 0.95,
        "pipeline-1w-shadow100/pipeline-1w": 0.7,  # the median 8,400 against 12,000
    }
    assert summary["cpu_s_per_million_median"]["pipeline-1w"] == 100.0  # 10 CPU s over 100,000 events
    assert summary["events_per_cpu_s_median"]["monolith-1p"] == 12_500


def test_each_target_is_judged_in_its_direction():
    http = {
        "open_loop": [{"offered": 500.0, "p50": 8.0, "p99": 60.0, "errors": 0, "cpu_ms_per_request": 2.0}],
        "request_response_open_loop": [{"offered": 500.0, "p50": 4.0, "p99": 40.0, "cpu_ms_per_request": 1.0}],
    }

    summary = summarise(RUNS, http)

    assert summary["http"] == {
        "bridge/request-response p50@500": 2.0,
        "bridge/request-response p99@500": 1.5,
        "bridge/request-response CPU per request@500": 2.0,
    }
    met = {name: t["met"] for name, t in summary["targets"].items()}
    assert met == {
        "pipeline-1w/passthrough-1p": True,
        "pipeline-2w/passthrough-2p": False,
        "pipeline-1w/monolith-1p": False,
        "pipeline-2w/monolith-2p": False,
        "pipeline-1w/monolith-1p per CPU s": False,  # at least 0.9
        "pipeline-1w/naive": True,
        "http@500 p50 ms": True,
        "http@500 p99 ms": False,
        "bridge/request-response p50@500": False,  # at most 1.5
        "bridge/request-response p99@500": True,  # at most 2
        "http@500 errors": True,
    }


def test_unmeasured_figures_judge_no_target():
    assert summarise({}, None)["targets"] == {}


def test_a_run_without_a_steady_span_does_not_skew_the_steady_median():
    runs = {
        "pipeline-2w": [_run(10_000, steady=v) for v in (math.nan, 30_000, 10_000)],
        "monolith-2p": [_run(10_000, steady=20_000)],
    }

    summary = summarise(runs, None)
    assert summary["steady_events_per_s_median"]["pipeline-2w"] == 20_000  # of 30,000 and 10,000
    assert summary["ratios"]["pipeline-2w/monolith-2p steady"] == 1.0


def test_the_limit_and_the_monolith_run_at_each_process_count_beside_the_pipeline():
    scenarios = throughput_scenarios((1, 2))
    assert scenarios == [
        ("passthrough-1p", 1),
        ("passthrough-2p", 2),
        ("passthrough-librdkafka", 1),
        ("pipeline-1w", 1),
        ("pipeline-2w", 2),
        ("pipeline-1w-canary10", 1),
        ("pipeline-1w-shadow100", 1),
        ("pipeline-1w-traced", 1),
        ("pipeline-1w-traced-1pct", 1),
        ("pipeline-1w-ttl", 1),
        ("model-mix-1w", 1),
        ("monolith-1p", 1),
        ("monolith-2p", 2),
        ("monolith-at-least-once", 1),
        ("naive", 1),
    ]
    kinds = {peer_kind(name) for name, _ in scenarios if not runs_workers(name)}
    assert kinds == {"passthrough", "passthrough-librdkafka", "monolith", "monolith-at-least-once", "naive"}


def _state(entries: int, peak: float) -> dict:
    written = {"entries": entries, "rss_mib": 150.0, "peak_rss_mib": peak}
    served = {"rss_mib": 1.0, "peak_rss_mib": 1.0, "rss_mib_before_open": 1.0, "first_lookup_s": 0.1}
    served["lookup_us_per_event"] = 1.0
    restarted = {side: {"peak_rss_mib": 1.0, "ready_s": 1.0, "first_result_s": 0.1} for side in ("full", "empty")}
    micro = {"dict_us_per_event": 1.0, "store_us_per_event": 2.0}
    parts = (written, served, 1 << 20, {"per_s": 1}, micro, restarted)
    return {"write": written, "summary": state_summary(*parts)}


def test_the_state_rss_target_is_judged_only_for_a_store_of_ten_million_entries():
    def target(entries: int, peak: float) -> dict | None:
        return summarise({}, None, _state(entries, peak))["targets"].get("state 10M RSS MiB")

    assert target(10_000_000, 390.0) == {"target": 400.0, "measured": 390.0, "met": True}
    assert target(10_000_000, 410.0)["met"] is False
    assert target(20_000, 90.0) is None


def test_a_canary_and_a_shadow_are_set_against_the_same_bridge_without_a_candidate():
    plain = {"offered": 500.0, "p50": 8.0, "p99": 40.0, "errors": 0, "cpu_ms_per_request": 2.0}
    shadowed = {"offered": 500.0, "p50": 10.0, "p99": 50.0, "errors": 0, "cpu_ms_per_request": 3.0}
    http = {
        "closed_loop": {"achieved_per_s": 800.0},
        "open_loop": [plain],
        "routed": {"shadow100": {"closed_loop": {"achieved_per_s": 600.0}, "open_loop": shadowed}},
    }

    assert summarise({}, http)["http"] == {
        "shadow100/none closed-loop ok/s": 0.75,
        "shadow100/none p50@500": 1.25,
        "shadow100/none p99@500": 1.25,
        "shadow100/none CPU per request@500": 1.5,
    }
