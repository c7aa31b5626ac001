"""A model's routing (pipeline/models/routing.py): the arm is the event_id's, shares hold over many
events, raising a share only adds events, and each change applies or is refused in one line."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from pipeline.models.routing import BUCKETS, Arm, Change, Route, Routing, RoutingRefused, bucket, decode, encode, fold

IDS = [f"evt-{i:07d}" for i in range(20_000)]


def _canary(shares: float, shadow: float = 0.0) -> Routing:
    return Routing("fraud_scorer", "1", candidate="2", canary_share=shares, shadow_share=shadow)


def test_the_bucket_is_the_blake2b_of_the_event_id_the_same_everywhere():
    # An oracle written apart: blake2b-64 of the UTF-8 id, personalised, big-endian, modulo BUCKETS.
    expected = int(hashlib.blake2b(b"evt-0000042", digest_size=8, person=b"arm").hexdigest(), 16) % 10_000
    assert bucket("evt-0000042") == expected
    assert BUCKETS == 10_000


def test_without_a_candidate_every_event_is_stable_and_unshadowed():
    routing = Routing("fraud_scorer", "1")
    assert {routing.route(e) for e in IDS[:500]} == {Route("1", Arm.STABLE)}


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.5])
def test_the_canary_share_over_20000_events_is_within_one_and_a_half_points(share):
    canary = sum(_canary(share).route(e).arm is Arm.CANARY for e in IDS) / len(IDS)
    assert abs(canary - share) <= 0.015


def test_an_event_lands_on_the_same_arm_every_time_and_raising_the_share_only_adds_events():
    at = {share: {e for e in IDS if _canary(share).route(e).arm is Arm.CANARY} for share in (0.1, 0.2, 0.3)}
    assert at[0.1] == {e for e in IDS if _canary(0.1).route(e).arm is Arm.CANARY}, "the same again"
    assert at[0.1] < at[0.2] < at[0.3]
    assert all(_canary(0.3).route(e).version == "2" for e in at[0.3])


def test_the_shadow_takes_its_share_of_the_stable_arm_only():
    routing = _canary(0.1, shadow=0.5)
    routes = [routing.route(e) for e in IDS]
    stable = [r for r in routes if r.arm is Arm.STABLE]
    assert all(r.shadow is None for r in routes if r.arm is Arm.CANARY)
    shadowed = sum(r.shadow == "2" for r in stable) / len(stable)
    assert abs(shadowed - 0.5) <= 0.015
    assert {r.version for r in stable} == {"1"}


def test_publish_share_promote_and_rollback():
    def change(action, **fields) -> Change:
        return Change("fraud_scorer", action, by="ops", at="2026-12-06T00:00:00Z", why="test", **fields)

    routing = Routing("fraud_scorer", "1").apply(change("publish", version="2"))
    assert (routing.stable, routing.candidate, routing.canary_share) == ("1", "2", 0.0)
    routing = routing.apply(change("share", canary_share=0.1, shadow_share=1.0))
    assert (routing.canary_share, routing.shadow_share) == (0.1, 1.0)
    assert routing.apply(change("share", canary_share=0.2)).shadow_share == 1.0, "an unnamed share stays"
    assert routing.versions() == {"1", "2"}

    canary_rolled_back = routing.apply(change("rollback"))
    assert canary_rolled_back == Routing("fraud_scorer", "1")

    promoted = routing.apply(change("promote"))
    assert (promoted.stable, promoted.candidate, promoted.canary_share, promoted.earlier) == ("2", None, 0.0, ("1",))
    assert promoted.apply(change("rollback")) == Routing("fraud_scorer", "1"), "back to the stable before"


@pytest.mark.parametrize(
    ("routing", "change", "reason"),
    [
        (_canary(0.1), Change("fraud_scorer", "share", canary_share=1.5), r"within \[0, 1\], not 1.5"),
        (_canary(0.1), Change("fraud_scorer", "share", shadow_share=-0.1), r"within \[0, 1\], not -0.1"),
        (Routing("fraud_scorer", "1"), Change("fraud_scorer", "promote"), "no candidate to promote"),
        (Routing("fraud_scorer", "1"), Change("fraud_scorer", "share", canary_share=0.1), "no candidate"),
        (Routing("fraud_scorer", "1"), Change("fraud_scorer", "rollback"), "nothing|no candidate and no earlier"),
        (Routing("fraud_scorer", "1"), Change("fraud_scorer", "publish", version="1"), "already the stable"),
        (Routing("fraud_scorer", "1"), Change("fraud_scorer", "publish"), "needs the version"),
        (Routing("fraud_scorer", "1"), Change("anomaly_detector", "promote"), "does not apply"),
    ],
)
def test_a_change_that_cannot_apply_is_refused_in_one_line(routing, change, reason):
    with pytest.raises(RoutingRefused, match=reason) as refused:
        routing.apply(change)
    assert "\n" not in str(refused.value)
    assert refused.value.code == "configuration_error"


def test_a_change_survives_the_topic_and_a_value_that_is_not_one_is_refused():
    change = Change("fraud_scorer", "share", canary_share=0.2, by="ops@bank", at="2026-12-06T10:00:00Z", why="ramp")
    assert decode(encode(change)) == change
    assert orjson.loads(encode(change))["canary_share"] == 0.2
    with pytest.raises(RoutingRefused, match="not a routing change: action"):
        decode(b'{"model": "fraud_scorer", "action": "delete"}')
    with pytest.raises(RoutingRefused, match="not a routing change"):
        decode(b"{not json")


def test_the_history_folds_to_one_routing_and_skips_what_cannot_apply_the_same_way_every_time():
    history = [
        Change("fraud_scorer", "publish", version="2"),
        Change("fraud_scorer", "share", canary_share=2.0),  # refused: outside [0, 1]
        Change("fraud_scorer", "share", canary_share=0.1),
        Change("fraud_scorer", "promote"),
        Change("fraud_scorer", "promote"),  # refused: no candidate any more
    ]
    routing, skipped = fold(Routing("fraud_scorer", "1"), history)
    assert routing == Routing("fraud_scorer", "2", earlier=("1",))
    assert [(c.action, why) for c, why in skipped] == [
        ("share", "the canary share must be within [0, 1], not 2"),
        ("promote", "fraud_scorer has no candidate to promote"),
    ]
    assert fold(Routing("fraud_scorer", "1"), history) == (routing, skipped)


def test_a_model_without_changes_is_served_as_triton_chooses_until_its_first_stable_version():
    unrouted = Routing("fraud_scorer")
    assert unrouted.route("evt-1") == Route("", Arm.STABLE) and unrouted.versions() == set()
    with pytest.raises(RoutingRefused, match="has no stable version yet"):
        unrouted.apply(Change("fraud_scorer", "publish", version="2"))
    first = unrouted.apply(Change("fraud_scorer", "init", version="3"))
    assert first == Routing("fraud_scorer", "3") and first.versions() == {"3"}
    with pytest.raises(RoutingRefused, match=r"already has a stable version \(3\)"):
        first.apply(Change("fraud_scorer", "init", version="4"))


def test_shares_in_buckets_follow_the_routing_through_its_changes():
    shared = Routing("fraud_scorer", "1").apply(Change("fraud_scorer", "publish", version="2"))
    shared = shared.apply(Change("fraud_scorer", "share", canary_share=0.25))
    canary = {e for e in IDS if shared.route(e).arm is Arm.CANARY}
    assert canary == {e for e in IDS if bucket(e) < 2_500}
