"""The throughput block of the bench's table."""

from __future__ import annotations

from pipeline.bench import throughput


def _run(events_per_s: float) -> dict:
    return {"events_per_s": events_per_s, "peak_rss_mib": {"worker": 300.0}, "cpu_s_per_million": {}, "stages": {}}


def test_five_runs_of_five_digit_rates_stay_apart_from_the_median_column():
    rates = [26_595.0, 24_440.0, 24_578.0, 32_113.0, 26_460.0]
    report = {
        "throughput_runs": {"pipeline-1w": [_run(r) for r in rates]},
        "summary": {"events_per_s_median": {"pipeline-1w": 26_460.0}, "ratios": {}},
    }
    row = throughput.lines(report)[1]
    assert row.split()[:7] == ["pipeline-1w", "26,460", "26,595,", "24,440,", "24,578,", "32,113,", "26,460"]
