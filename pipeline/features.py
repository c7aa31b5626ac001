"""Batch feature lookup from the Feast online store: one call per batch, unique entities only."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from pipeline.errors import FeatureStoreUnavailable
from pipeline.models.spec import ModelSpec

EntityId = int | str


class FeatureLookup:
    def __init__(self, repo_path: Path) -> None:
        from feast import FeatureStore  # heavy import, kept out of module import time

        self._store = FeatureStore(repo_path=str(repo_path))
        # Feast's SQLite connection belongs to the thread that opened it: use one thread, always.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")

    async def fetch(self, spec: ModelSpec, entity_ids: Sequence[EntityId]) -> dict[EntityId, np.ndarray | None]:
        """Feature rows (in the spec's order) by entity id; None where the store has no complete row."""
        unique = list(dict.fromkeys(entity_ids))
        if not unique:
            return {}
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self._thread, self._read, spec, unique)
        except (sqlite3.Error, RedisError, OSError) as e:
            raise FeatureStoreUnavailable(f"feature store read failed: {e}") from e
        return rows_by_entity(spec, unique, response)

    def _read(self, spec: ModelSpec, unique: list[EntityId]) -> dict[str, list[Any]]:
        online = self._store.get_online_features(
            features=list(spec.store_features), entity_rows={spec.entity_key: unique}
        )
        return online.to_dict()

    def close(self) -> None:
        self._thread.shutdown(wait=False)


def rows_by_entity(
    spec: ModelSpec, unique: list[EntityId], response: dict[str, list[Any]]
) -> dict[EntityId, np.ndarray | None]:
    """Pure: Feast's column-wise response → one float32 row per entity, None when any value is missing."""
    columns = [response[name] for name in spec.store_feature_names]
    rows: dict[EntityId, np.ndarray | None] = {}
    for i, entity in enumerate(unique):
        values = [column[i] for column in columns]
        rows[entity] = None if any(v is None for v in values) else np.asarray(values, dtype=np.float32)
    return rows
