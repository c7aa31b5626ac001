from __future__ import annotations

from pipeline.kafka.durability import Replication, findings


def test_a_topic_below_the_production_minimum_is_refused_and_named():
    refusals, warnings = findings([Replication("req", 1, 1), Replication("res", 3, 2)], minimum=3)
    assert refusals == ["req has 1 replica(s), fewer than kafka.min_replication_factor 3"] and warnings == []


def test_one_insync_replica_is_refused_in_production_and_a_warning_in_development():
    one = [Replication("res", 3, 1)]
    refused, _ = findings(one, minimum=3)
    _, warned = findings(one, minimum=1)
    assert refused == warned == ["res has min.insync.replicas 1: acks=all is then acknowledged by one replica"]


def test_a_single_broker_for_development_and_an_unknown_config_pass():
    assert findings([Replication("req", 1, 1), Replication("res", 3, None)], minimum=1) == ([], [])
    assert findings([Replication("res", 3, None)], minimum=3) == ([], [])
