"""The worker's direct online-store read returns exactly what Feast's get_online_features returns."""

from __future__ import annotations

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
