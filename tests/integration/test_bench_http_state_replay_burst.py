"""`pipeline bench`'s HTTP, dedup-state, replay and burst groups end to end on a tiny load: every
figure is produced (no timing is asserted). The throughput and consumer groups: test_bench.py."""

from __future__ import annotations

import orjson
import pytest

from pipeline.bench import report, runner
from tests.integration.tiny_bench import TINY

pytestmark = pytest.mark.integration


def test_a_tiny_bench_produces_every_http_state_replay_and_burst_figure(stack, tmp_path):

    figures = runner.run(stack.settings(), TINY, {"http", "state", "replay", "burst"}, stack=stack)
    report.write_json(figures, tmp_path / "bench.json")
    table = report.table(figures)

    written = orjson.loads((tmp_path / "bench.json").read_bytes())
    summary = written["summary"]
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
    assert "direct Triton" in table and "at commit" in table
    assert "request-response, 40 req/s" in table and "shadow100: open, 40 req/s" in table
    assert "dedup state on disk" in table and "cold rebuild" in table and "worker restarted on it" in table
    replayed = written["replay"]
    assert replayed["publish"]["published"] == 3_000 and replayed["publish"]["per_s"] > 0
    assert replayed["scored"]["events"] == 1_000 and replayed["scored"]["events_per_s"] > 0
    assert replayed["live_http"]["during_replay"]["errors"] == 0 and replayed["live_http"]["p99_ratio"] > 0
    assert "replay of a Parquet file of 3,000 requests" in table
    burst = written["burst"]
    assert burst["fixed_one"]["events"] == burst["fixed_max"]["events"] == burst["scaled"]["events"] == 3_000
    assert burst["fixed_max"]["workers"] == 2 and 1 <= burst["scaled"]["most_workers"] <= 2
    assert set(burst["scaled"]["scale_events"]) == {"up", "down"} and burst["ratios"]["scaled/fixed_one"] > 0
    best = min(burst["fixed_one"]["seconds"], burst["fixed_max"]["seconds"])
    assert burst["fixed_best"]["seconds"] == best and burst["scaled"]["max_workers"] == 2
    assert burst["ratios"]["scaled/fixed_best"] == round(burst["scaled"]["seconds"] / best, 3)
    assert summary["burst"]["seconds"]["scaled"] > 0
    assert "a burst of 3,000 requests" in table and "pipeline scale from one" in table
