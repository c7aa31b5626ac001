from __future__ import annotations

import orjson

from pipeline.contract import REPLAY_ID, RESULTS_TOPIC, Source
from pipeline.local import traffic
from pipeline.settings import Settings
from pipeline.worker.messages import DedupEntry, Inbound, Outbound
from pipeline.worker.processor import BatchProcessor, Outcome


def test_keeping_partitions_drops_what_belongs_to_the_others():
    # A partition revoked while its records were scored: its results, replies and dedup entries go.
    outcome = Outcome(
        messages=[
            Outbound(1, "inference.results", b"a", b"r1", 1),
            Outbound(2, "inference.results", b"b", b"r2", 2),
        ],
        replies=[Outbound(1, "inference.replies", b"a", b"r1", 0), Outbound(2, "inference.replies", b"b", b"r2", 0)],
        remembered=[DedupEntry("a", 1, b"r1"), DedupEntry("b", 2, b"r2")],
    )
    outcome.events["scored"] = 2
    kept = outcome.keep({1})
    assert [(m.source_partition, m.value) for m in kept.messages] == [(1, b"r1")]
    assert [(m.source_partition, m.value) for m in kept.replies] == [(1, b"r1")]
    assert kept.remembered == [("a", 1, b"r1")]


def test_a_backfill_request_naming_a_missing_results_topic_is_dead_lettered_and_the_others_go_on():
    topics = Settings().topics
    processor = BatchProcessor(
        topics, "fraud_scorer", None, None, None, None, None, copies=True, topic_exists={"mine"}.__contains__
    )  # type: ignore[arg-type]  # validation touches none of the scoring parts
    first, second, live = traffic.valid_requests(3, prefix="c-")

    def inbound(request: dict, offset: int, topic: bytes | None) -> Inbound:
        headers = {REPLAY_ID: b"r1", RESULTS_TOPIC: topic} if topic else {}
        return Inbound(orjson.dumps(request), b"k", headers, Source("inference.requests.backfill", 0, offset), 0.0)

    validated = processor.validate([inbound(first, 0, b"mine"), inbound(second, 1, b"gone"), inbound(live, 2, None)])

    assert [r.event_id for r, _ in validated.parsed] == [first["event_id"], live["event_id"]]
    [dead] = validated.outcome.messages
    record = orjson.loads(dead.value)
    assert dead.topic == topics.dlq and dict(dead.headers) == {REPLAY_ID: b"r1"}
    assert record["event_id"] == second["event_id"] and record["error"]["code"] == "invalid_request"
    assert "'gone': no such topic" in record["error"]["message"]
