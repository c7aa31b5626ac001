from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline import topics
from pipeline.errors import ConfigurationError
from pipeline.local.stack import free_port, settings_env
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


def _pipeline(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_topics_below_the_production_replication_minimum_are_refused_at_start_in_one_line(pipeline_settings):
    """The session's broker is a single one: every topic has one replica, below a production minimum."""
    production = pipeline_settings().updated(kafka={"min_replication_factor": 3})
    applied, worker = _pipeline(production, "topics", "apply"), _pipeline(production, "worker")
    for done in (applied, worker):
        assert done.returncode == 1, done.stderr[-2000:]
        [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert f"{production.topics.results} has 1 replica(s), fewer than kafka.min_replication_factor 3" in line
    assert "unchanged " in applied.stdout, "what topics apply did is still printed"
    assert _pipeline(production.updated(kafka={"min_replication_factor": 1}), "topics", "apply").returncode == 0


def test_a_bootstrap_where_no_broker_answers_stops_a_worker_at_start_in_one_line(pipeline_settings):
    nowhere = pipeline_settings().updated(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    done = _pipeline(nowhere, "worker")
    assert done.returncode == 1, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert f"kafka at {nowhere.kafka.bootstrap_servers}: no broker answered" in line, line
