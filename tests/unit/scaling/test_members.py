from __future__ import annotations

from pipeline.scaling.members import assignment_of


def test_each_member_by_client_id_with_its_partitions_of_the_topic():
    members = [
        ("pipeline-worker-0", "m-aaaaaaaa11111111", [("requests", 3), ("requests", 1), ("other", 0)]),
        ("pipeline-worker-1", "m-bbbbbbbb22222222", [("requests", 0)]),
    ]
    assert assignment_of(members, "requests") == {"pipeline-worker-0": [1, 3], "pipeline-worker-1": [0]}


def test_members_sharing_a_client_id_are_told_apart_by_their_member_id():
    members = [("pipeline-worker", "m-1-aaaaaaaa", [("requests", 0)]), ("pipeline-worker", "m-2-bbbbbbbb", [])]
    assert assignment_of(members, "requests") == {"pipeline-worker/aaaaaaaa": [0], "pipeline-worker/bbbbbbbb": []}
