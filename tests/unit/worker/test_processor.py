from __future__ import annotations

from pipeline.worker.processor import Outbound, Outcome


def test_keeping_partitions_drops_what_belongs_to_the_others():
    # A partition revoked while its records were scored: its results, replies and dedup entries go.
    outcome = Outcome(
        messages=[
            Outbound(1, "inference.results", b"a", b"r1", 1),
            Outbound(2, "inference.results", b"b", b"r2", 2),
        ],
        replies=[Outbound(1, "inference.replies", b"a", b"r1", 0), Outbound(2, "inference.replies", b"b", b"r2", 0)],
        remembered=[("a", 1, b"r1"), ("b", 2, b"r2")],
    )
    outcome.events["scored"] = 2
    kept = outcome.keep({1})
    assert [(m.source_partition, m.value) for m in kept.messages] == [(1, b"r1")]
    assert [(m.source_partition, m.value) for m in kept.replies] == [(1, b"r1")]
    assert kept.remembered == [("a", 1, b"r1")]
