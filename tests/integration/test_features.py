"""The worker's direct online-store read returns exactly what Feast's get_online_features returns; rows
are reused from its cache, and held rows are dropped once the registry records a materialisation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from pipeline.features.lookup import FeatureLookup, rows_by_entity
from pipeline.models.spec import load_spec_file

pytestmark = pytest.mark.integration

UNKNOWN = 10_000_000


@pytest.fixture(scope="module")
def spec(stack):
    repository = stack.settings().triton.model_repository
    return load_spec_file(repository / "fraud_scorer" / "config.pbtxt")


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_direct_read_equals_get_online_features(store, spec, stack, request):
    repo = stack.settings().feast.repo_path if store == "sqlite" else request.getfixturevalue("redis_feature_repo")
    lookup = FeatureLookup(repo)
    entities = [*range(1, 300, 7), UNKNOWN, 5]
    try:
        rows = await lookup.fetch(spec, entities)
        unique = list(dict.fromkeys(entities))
        reference = rows_by_entity(
            spec,
            unique,
            lookup._store.get_online_features(
                features=list(spec.store_features), entity_rows={spec.entity_key: unique}
            ).to_dict(),
        )
    finally:
        lookup.close()

    assert rows[UNKNOWN] is None and reference[UNKNOWN] is None
    for entity in unique:
        if entity != UNKNOWN:
            np.testing.assert_array_equal(rows[entity], reference[entity])
    assert len([r for r in rows.values() if r is not None]) == len(unique) - 1


async def test_rows_read_once_are_served_from_the_cache_and_counted(stack, spec):
    lookup = FeatureLookup(stack.settings().feast.repo_path, cache_ttl_s=60)
    entities = list(range(1, 41))

    def counted(source: str) -> float:
        return REGISTRY.get_sample_value("pipeline_feature_rows_total", {"source": source}) or 0.0

    before = counted("cache"), counted("store")
    try:
        first = await lookup.fetch(spec, entities)
        second = await lookup.fetch(spec, [*entities, 41])
    finally:
        lookup.close()

    assert all(first[e] is not None for e in entities)
    for entity in entities:
        np.testing.assert_array_equal(second[entity], first[entity])
    assert (counted("cache") - before[0], counted("store") - before[1]) == (40, 41)


def test_the_online_store_is_reloaded_when_the_generated_data_change(stack, tmp_path):
    from feast import FeatureStore

    from pipeline.features import demo_data

    source = stack.settings().feast.repo_path
    for item in [*source.glob("*.py"), source / ".feastignore", source / "feature_store.yaml"]:
        (tmp_path / item.name).write_bytes(item.read_bytes())

    assert demo_data.apply(tmp_path, accounts=30, devices=10) is True
    assert demo_data.apply(tmp_path, accounts=30, devices=10) is False, "the same data: nothing reloaded"
    assert demo_data.apply(tmp_path, accounts=30, devices=12) is True, "two devices more: loaded again"
    online = FeatureStore(repo_path=str(tmp_path)).get_online_features(
        features=["device_baselines:rpm_mean"], entity_rows=[{"device_id": 12}, {"device_id": 13}]
    )
    assert [v is not None for v in online.to_dict()["rpm_mean"]] == [True, False]


async def test_rows_are_held_past_the_ttl_until_the_registry_records_a_materialisation(stack, spec, tmp_path):
    """Held rows outlive the TTL with no store read; once a materialisation is recorded they go,
    and an account the store had no row for, now materialised, is read."""
    from pipeline.features import demo_data

    source = stack.settings().feast.repo_path
    for item in [*source.glob("*.py"), source / ".feastignore", source / "feature_store.yaml"]:
        (tmp_path / item.name).write_bytes(item.read_bytes())
    assert demo_data.apply(tmp_path, accounts=30, devices=10) is True
    lookup = FeatureLookup(tmp_path, cache_ttl_s=0.001, hold_until_materialised=True, registry_poll_s=0.1)
    accounts = list(range(1, 32))  # 31: no row yet

    def reads() -> float:
        return REGISTRY.get_sample_value("pipeline_feature_rows_total", {"source": "store"}) or 0.0

    try:
        first = await lookup.fetch(spec, accounts)
        read_first = reads()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # many TTLs and registry looks: still held
            held = await lookup.fetch(spec, accounts)
        read_held = reads()

        assert demo_data.apply(tmp_path, accounts=31, devices=10) is True
        deadline = time.monotonic() + 30
        after = await lookup.fetch(spec, accounts)
        while after[31] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the next registry look
            after = await lookup.fetch(spec, accounts)
    finally:
        lookup.close()

    assert first[31] is None and all(first[a] is not None for a in accounts[:-1])
    assert read_held == read_first, "no store read while no materialisation was recorded"
    for account in accounts[:-1]:
        np.testing.assert_array_equal(held[account], first[account])
    assert after[31] is not None, "read again once materialised"
    assert reads() >= read_first + len(accounts), "every held row dropped and read again"
