"""The state group's entries and its child processes' work, on a real RocksDB in a temporary directory
(pipeline/bench/state.py); the broker's part (the cold rebuild) is in tests/integration/test_bench.py."""

from __future__ import annotations

import random

import orjson

from pipeline.bench import state
from pipeline.contract import result_record
from pipeline.settings import Settings


def _settings() -> Settings:
    return Settings().updated(worker={"state_cache_mib": 8})


def test_results_are_real_result_records_varied_per_entry():
    results = state.Results("2026-01-01T00:00:00.000Z")
    records = [orjson.loads(results(i)) for i in range(2_000)]
    real = result_record(
        event_id="e",
        model="m",
        model_version="1",
        score=0.1,
        threshold=0.5,
        latency_ms=1.0,
        scored_at="t",
        entity={"account_id": 1},
    )

    assert all(r.keys() == real.keys() for r in records)
    assert [r["event_id"] for r in records[:3]] == [state.event_id(i) for i in range(3)]
    assert len({(r["score"], r["latency_ms"]) for r in records}) == 2_000
    assert all(r["label"] == ("fraud" if r["score"] >= 0.5 else "legit") for r in records)
    assert 150 <= state.mean_result_bytes() <= 250


def test_event_ids_are_distinct_and_unordered():
    ids = [state.event_id(i) for i in range(10_000)]

    assert len(set(ids)) == len(ids) and all(len(e) == 32 for e in ids)
    assert ids != sorted(ids)


def test_a_lookup_batch_holds_its_share_of_stored_entries():
    fresh = iter(range(1_000, 10**6))
    indexes = state.lookup_indexes(1_000, 1_024, random.Random(1), fresh)

    assert len(indexes) == 1_024
    assert sum(i < 1_000 for i in indexes) == round(1_024 * state.HIT_SHARE)
    assert len({i for i in indexes if i >= 1_000}) == 1_024 - round(1_024 * state.HIT_SHARE)


def test_a_written_store_is_served_again_with_every_hit_found(tmp_path):
    written = state.write(tmp_path, 5_000, _settings())
    served = state.serve(tmp_path, 5_000, 2_048, _settings())

    assert written["entries"] == 5_000 and written["peak_rss_mib"] > 0 and written["cpu_us_per_entry"] > 0
    assert written["store"]["estimate-num-keys"] > 0
    assert served["lookups"] == 2_048 and served["hits"] == 2 * round(1_024 * state.HIT_SHARE)
    assert 0 <= served["open_s"] <= served["first_lookup_s"]
    assert state.disk_bytes(tmp_path) > 5_000 * 50


def test_the_microbenchmark_times_the_dict_and_the_store_on_the_same_batches(tmp_path):
    figures = state.micro(tmp_path, 2_000, 2, 3, _settings())

    assert figures["events_per_round"] == 2_048
    rounds = figures["rounds_us_per_event"]
    assert [len(rounds[name][phase]) for name in ("dict", "store") for phase in ("read", "write")] == [3] * 4
    assert figures["dict_us_per_event"] > 0 and figures["store_us_per_event"] > 0
    assert figures["store_read_us_per_event"] > 0 and figures["store_write_us_per_event"] > 0


def test_a_role_writes_its_figures_beside_the_store(tmp_path):
    out = state.run_role("write", tmp_path, {"entries": 100}, _settings())

    assert out == tmp_path / "write.json" and orjson.loads(out.read_bytes())["entries"] == 100
