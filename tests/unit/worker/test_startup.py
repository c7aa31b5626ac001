"""A results topic that forgets sooner than the dedup window is refused (repeats would be scored again)."""

from __future__ import annotations

from pipeline.worker.startup import retention_gap

DAY_S = 86_400.0


def test_retention_shorter_than_the_window_is_named():
    assert retention_gap({"retention.ms": "3600000", "cleanup.policy": "delete"}, DAY_S) == (
        "keeps records 3600 s (retention.ms)"
    )


def test_retention_covering_the_window_or_unlimited_passes():
    assert retention_gap({"retention.ms": "604800000"}, DAY_S) is None
    assert retention_gap({"retention.ms": "86400000"}, DAY_S) is None
    assert retention_gap({"retention.ms": "-1"}, DAY_S) is None


def test_a_compacted_only_topic_keeps_every_event_ids_last_result():
    assert retention_gap({"retention.ms": "1000", "cleanup.policy": "compact"}, DAY_S) is None
    assert retention_gap({"retention.ms": "1000", "cleanup.policy": "compact,delete"}, DAY_S) is not None
