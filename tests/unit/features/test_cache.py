from pipeline.features.cache import TtlCache


def test_fresh_values_are_found_and_the_rest_are_to_read():
    cache = TtlCache(5.0)
    cache.put_many({"a": 1, "b": None}, now=100.0)

    found, missing = cache.get_many(["a", "b", "c"], now=104.9)

    assert found == {"a": 1, "b": None}  # a known-missing row is cached too
    assert missing == ["c"]


def test_entries_expire_after_the_ttl_and_are_dropped():
    cache = TtlCache(5.0)
    cache.put_many({"a": 1}, now=100.0)
    cache.put_many({"b": 2}, now=103.0)

    found, missing = cache.get_many(["a", "b"], now=105.0)

    assert found == {"b": 2} and missing == ["a"]
    assert len(cache) == 1


def test_a_refreshed_entry_lives_a_full_ttl_again():
    cache = TtlCache(5.0)
    cache.put_many({"a": 1, "b": 2}, now=100.0)
    cache.put_many({"a": 3}, now=104.0)

    found, _ = cache.get_many(["a", "b"], now=106.0)

    assert found == {"a": 3}


def test_ttl_zero_caches_nothing():
    cache = TtlCache(0.0)
    cache.put_many({"a": 1}, now=100.0)

    assert cache.get_many(["a"], now=100.0) == ({}, ["a"])


def test_rows_held_until_cleared_never_expire_and_the_oldest_go_past_the_bound():
    cache = TtlCache(float("inf"), max_entries=2)
    cache.put_many({"a": 1, "b": 2}, now=100.0)
    assert cache.get_many(["a", "b"], now=1e9) == ({"a": 1, "b": 2}, [])

    cache.put_many({"c": 3}, now=1e9)
    assert cache.get_many(["a", "b", "c"], now=1e9) == ({"b": 2, "c": 3}, ["a"])

    cache.clear()
    assert cache.get_many(["b", "c"], now=1e9) == ({}, ["b", "c"])
