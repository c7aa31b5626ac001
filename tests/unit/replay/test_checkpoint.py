from __future__ import annotations

from collections import Counter

import pytest

from pipeline.errors import ConfigurationError
from pipeline.replay.checkpoint import Checkpoint
from pipeline.replay.publisher import Options, begin
from pipeline.replay.sources import JsonLinesSource


def test_a_checkpoint_survives_its_encoding():
    point = Checkpoint(
        "r1", {"kind": "jsonl", "path": "/x"}, {0: (0, 10), 3: (5, 9)}, "results.backfill",
        positions={0: 4}, counts=Counter(read=4, published=3, rejected=1), rejected=Counter(invalid_json=1),
        model_version="fraud_scorer:2",
    )  # fmt: skip
    again = Checkpoint.decode(point.encode())
    assert again == point
    assert again.total() == 14 and again.remaining() == 6 + 4


def test_a_replay_resumes_only_on_the_source_it_began_with(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"event_id": "a"}\n{"event_id": "b"}\n')
    second.write_text('{"event_id": "a"}\n')
    options = Options(replay_id="r1", results_topic="results.backfill")
    fresh = begin(None, JsonLinesSource(first), options)
    assert fresh.positions == {} and fresh.ranges == {0: (0, 2)} and not fresh.done
    fresh.positions[0] = 1
    assert begin(fresh, JsonLinesSource(first), options) is fresh, "resumed where it stopped"
    with pytest.raises(ConfigurationError, match="began on another source"):
        begin(fresh, JsonLinesSource(second), options)
    first.write_text('{"event_id": "a"}\n{"event_id": "b"}\n{"event_id": "c"}\n')
    with pytest.raises(ConfigurationError, match="its source changed"):
        begin(fresh, JsonLinesSource(first), options)


def test_a_backtest_resumes_only_with_the_version_it_began_with(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"event_id": "a"}\n{"event_id": "b"}\n')
    backtest = Options(replay_id="r1", results_topic="results.backfill", model_version="fraud_scorer:2")
    began = begin(None, JsonLinesSource(path), backtest)
    assert began.model_version == "fraud_scorer:2"
    assert begin(began, JsonLinesSource(path), backtest) is began
    with pytest.raises(ConfigurationError, match=r"began with --model-version fraud_scorer:2: resume it so"):
        begin(began, JsonLinesSource(path), Options(replay_id="r1", results_topic="results.backfill"))
    live = begin(None, JsonLinesSource(path), Options(replay_id="r2", results_topic="results.backfill"))
    with pytest.raises(ConfigurationError, match="began with no --model-version"):
        begin(live, JsonLinesSource(path), Options(replay_id="r2", results_topic="r", model_version="fraud_scorer:3"))
