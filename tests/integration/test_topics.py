from __future__ import annotations

import pytest

from pipeline import topics
from pipeline.errors import ConfigurationError
from pipeline.worker import startup

pytestmark = pytest.mark.integration


def test_topics_apply_creates_the_contract_topics_once(pipeline_settings):
    settings = pipeline_settings()  # the factory has applied them once already
    again = topics.apply(settings)
    assert again.created == [] and again.grown == []
    assert sorted(again.unchanged) == sorted(s.name for s in topics.load_specs(settings))
    assert topics.partition_count(settings, settings.topics.requests) == 12


def test_a_worker_refuses_a_results_topic_with_fewer_partitions_than_the_requests(pipeline_settings):
    # Results land on the partition numbered like their request's (the dedup changelog): 12 needs 12.
    settings = pipeline_settings()
    narrow = settings.updated(topics={"results": settings.topics.results + ".narrow"})
    topics.apply(narrow, [topics.TopicSpec(narrow.topics.results, 3, {})])
    assert startup.check_copartitioned(settings) == 12
    with pytest.raises(ConfigurationError, match=r"has 3 partitions, fewer than .*\(12\)"):
        startup.check_copartitioned(narrow)


def test_a_worker_refuses_a_results_topic_that_forgets_sooner_than_the_dedup_window(pipeline_settings):
    settings = pipeline_settings()
    startup.check_retention(settings)  # the contract's 7 days cover the default 24 h window
    short = settings.updated(topics={"results": settings.topics.results + ".short"})
    topics.apply(short, [topics.TopicSpec(short.topics.results, 12, {"retention.ms": "3600000"})])
    with pytest.raises(
        ConfigurationError, match=r"keeps records 3600 s \(retention.ms\), shorter than the dedup window"
    ):
        startup.check_retention(short)
    startup.check_retention(short.updated(worker={"dedup_window_s": 1800}))
