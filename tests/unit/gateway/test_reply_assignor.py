from pipeline.gateway.reply_assignor import NO_HOME, assign_homes


def test_newcomers_get_distinct_free_partitions_in_member_order():
    assert assign_homes({"b": NO_HOME, "a": NO_HOME}, range(3)) == {"a": 0, "b": 1}


def test_claims_are_kept_when_a_member_joins_or_leaves():
    assert assign_homes({"a": 2, "b": 0, "c": NO_HOME}, range(3)) == {"a": 2, "b": 0, "c": 1}
    assert assign_homes({"b": 0}, range(3)) == {"b": 0}


def test_a_contested_claim_goes_to_the_first_member_and_the_other_moves():
    assert assign_homes({"a": 1, "b": 1}, range(3)) == {"a": 1, "b": 0}


def test_a_claim_on_a_partition_that_no_longer_exists_is_replaced():
    assert assign_homes({"a": 7}, range(2)) == {"a": 0}


def test_members_beyond_the_partition_count_get_no_home():
    homes = assign_homes({m: NO_HOME for m in "abc"}, range(2))
    assert sorted(homes.values()) == [NO_HOME, 0, 1]


def test_the_group_protocol_assigns_each_member_one_partition_of_its_own_topic():
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    from pipeline.gateway.reply_assignor import ReplyPartitionAssignor

    class Cluster:
        def partitions_for_topic(self, topic):
            return {"r1": {0, 1, 2}, "r2": {0, 1}}[topic]

    assignor = ReplyPartitionAssignor("r1")
    assignor.home = 2
    members = {
        "a": assignor.metadata(["r1"]),
        "b": ConsumerProtocolMemberMetadata(0, ["r1"], b""),
        "c": ConsumerProtocolMemberMetadata(0, ["r2"], b""),
    }

    assignments = assignor.assign(Cluster(), members)

    homes = {m: [(tp.topic, tp.partition) for tp in a.partitions()] for m, a in assignments.items()}
    assert homes == {"a": [("r1", 2)], "b": [("r1", 0)], "c": [("r2", 0)]}
    assignor.on_assignment(assignments["a"])
    assert assignor.home == 2
