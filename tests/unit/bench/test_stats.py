import math

from pipeline.bench.memory import parse_status
from pipeline.bench.stats import (
    median_figures,
    per_event_us,
    per_million,
    percentiles_ms,
    stage_summary,
    stage_totals,
    state_summary,
    steady_rate,
)

METRICS = """
# TYPE pipeline_stage_seconds histogram
pipeline_stage_seconds_bucket{stage="features",le="+Inf"} 4.0
pipeline_stage_seconds_count{stage="features"} 4.0
pipeline_stage_seconds_sum{stage="features"} 0.04
# TYPE pipeline_queue_wait_seconds histogram
pipeline_queue_wait_seconds_bucket{le="+Inf"} 100.0
pipeline_queue_wait_seconds_count 100.0
pipeline_queue_wait_seconds_sum 2.0
"""


def test_percentiles_are_in_ms_and_nan_without_samples():
    figures = percentiles_ms([0.001 * i for i in range(1, 1001)])
    assert figures["p50"] == 500.5 and figures["p99"] == 990.01
    assert all(math.isnan(v) for v in percentiles_ms([]).values())


def test_an_http_level_reports_median_percentiles_over_its_repetitions_and_every_error():
    def run(p50: float, p99: float, errors: int) -> dict:
        statuses = {"200": 1000 - errors, **({"504": errors} if errors else {})}
        figures = {"mode": "open", "offered": 500.0, "requests": 1000, "achieved_per_s": 500.0 - errors}
        return (
            figures
            | {"errors": errors, "server_errors_5xx": errors, "statuses": statuses, "p50": p50}
            | {"p90": p50 * 2, "p99": p99, "p99.9": p99 * 2}
        )

    merged = median_figures([run(20.0, 60.0, 0), run(30.0, 40.0, 2), run(10.0, 90.0, 0)])

    assert (merged["offered"], merged["p50"], merged["p90"], merged["p99"]) == (500.0, 20.0, 40.0, 60.0)
    assert (merged["requests"], merged["errors"], merged["server_errors_5xx"]) == (3000, 2, 2)
    assert merged["statuses"] == {"200": 2998, "504": 2}
    assert [r["p99"] for r in merged["repetitions"]] == [60.0, 40.0, 90.0]


def test_the_steady_rate_leaves_out_a_runs_start_and_tail():
    # 1,000 outputs: none for the first second (the backlog being published), then 500/s, then a tail.
    timeline = [(1.0 + i * 0.1, 50 * i) for i in range(1, 17)] + [(4.0, 1_000)]

    assert steady_rate(timeline, 1_000) == 500.0  # 200 at 1.4 s, 800 at 2.6 s
    assert math.isnan(steady_rate([(1.0, 1_000)], 1_000))  # all at once: no span to measure


def test_stage_summary_is_the_mean_between_two_scrapes_summed_over_workers():
    before = stage_totals([METRICS])
    after = stage_totals([METRICS, METRICS.replace("0.04", "0.12").replace(" 4.0", " 8.0")])

    summary = stage_summary(after, before)

    assert summary["features"] == {"mean_ms": 15.0, "count": 8}  # (0.04 + 0.12) / (4 + 8), less the first
    assert summary["event:queue_wait"] == {"mean_ms": 20.0, "count": 100}


def test_proc_status_lines_are_read_in_mib():
    assert parse_status("Name:\tpython\nVmHWM:\t  204800 kB\n", "VmHWM") == 200.0
    assert parse_status("Name:\tpython\n", "VmHWM") is None


def test_per_event_and_per_million_figures_and_nan_without_a_count():
    assert per_event_us(0.5, 1_000_000) == 0.5
    assert per_million(800.0, 10_000_000) == 80.0
    assert math.isnan(per_event_us(1.0, 0)) and math.isnan(per_million(1.0, 0))


def _state_parts(
    entries: int, writer_peak: float, serving_peak: float, worker_peak: float = 150.0
) -> tuple[dict, dict, int, dict, dict, dict]:
    written = {"entries": entries, "rss_mib": 150.0, "peak_rss_mib": writer_peak}
    served = {
        "rss_mib": 130.0,
        "peak_rss_mib": serving_peak,
        "rss_mib_before_open": 70.0,
        "first_lookup_s": 0.08,
        "lookup_us_per_event": 3.5,
    }
    micro = {"dict_us_per_event": 0.4, "store_us_per_event": 3.0}
    restarted = {
        "full": {"peak_rss_mib": worker_peak, "ready_s": 2.5, "first_result_s": 0.05},
        "empty": {"peak_rss_mib": 140.0, "ready_s": 2.3, "first_result_s": 0.04},
    }
    return written, served, 800 << 20, {"per_s": 120_000}, micro, restarted


def test_the_state_summary_takes_the_larger_peak_and_puts_disk_and_cost_per_entry_and_event():
    summary = state_summary(*_state_parts(10_000_000, 160.0, 170.0))

    assert summary["rss_mib"] == 170.0 and summary["rss_mib_serving_over_baseline"] == 60.0
    assert (summary["disk_mib"], summary["disk_mib_per_million"]) == (800.0, 80.0)
    assert summary["disk_bytes_per_entry"] == 83.9  # 800 MiB / 10M
    assert (summary["warm_restart_s"], summary["rebuild_entries_per_s"]) == (0.08, 120_000)
    assert summary["dedup_store_over_dict"] == 7.5
    assert (summary["worker_ready_s"], summary["worker_ready_s_empty"], summary["rss_mib_worker"]) == (2.5, 2.3, 150.0)


def test_the_state_rss_is_the_largest_peak_the_restarted_worker_included():
    assert state_summary(*_state_parts(10_000_000, 160.0, 170.0, worker_peak=380.0))["rss_mib"] == 380.0
