from __future__ import annotations

from pipeline.gateway.auth import ApiKeys


def test_without_keys_the_bridge_is_open():
    assert ApiKeys([]).identify({}) == "open"
    assert not ApiKeys([]).enabled


def test_a_key_is_accepted_as_bearer_or_x_api_key_and_several_keys_rotate():
    keys = ApiKeys(["old-key", "new-key"])
    assert keys.identify({"authorization": "Bearer old-key"}) is not None
    assert keys.identify({"x-api-key": "new-key"}) is not None
    assert keys.identify({"authorization": "bearer new-key"}) == keys.identify({"x-api-key": "new-key"})


def test_missing_or_wrong_keys_are_refused():
    keys = ApiKeys(["secret"])
    assert keys.identify({}) is None
    assert keys.identify({"authorization": "Bearer wrong"}) is None
    assert keys.identify({"authorization": "Basic secret"}) is None
    assert keys.identify({"x-api-key": ""}) is None


def test_the_key_id_does_not_reveal_the_key():
    key_id = ApiKeys(["secret-value"]).identify({"x-api-key": "secret-value"})
    assert key_id is not None and "secret" not in key_id
