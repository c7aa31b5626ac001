"""Batch feature lookup from the Feast online store: one read per batch, unique entities only.

`FeatureStore.get_online_features` spends ~30 µs of Python per entity building and converting
protos, more than the store read itself. The worker instead calls the online store's own
`online_read` (through Feast's provider, so Feast's key serialisation, table layout and registry
are used unchanged) and turns the values straight into float rows. On SQLite (the default store)
it runs the same query itself, minus the timestamp columns: Feast's read parses a datetime per
feature value in Python, a third of its CPU (256 entities: ~10.7 -> ~7 ms). A test keeps the
result identical to `get_online_features` on SQLite and Redis. Rows are reused for
`PIPELINE_FEAST__CACHE_TTL_S` seconds (see `feature_cache`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from pipeline.errors import FeatureStoreUnavailable
from pipeline.feature_cache import TtlCache
from pipeline.models.spec import ModelSpec

EntityId = int | str


class FeatureLookup:
    def __init__(self, repo_path: Path, cache_ttl_s: float = 0.0) -> None:
        from feast import FeatureStore  # heavy imports, kept out of module import time
        from feast.infra.provider import get_provider
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value

        self._store = FeatureStore(repo_path=str(repo_path))
        self._provider = get_provider(self._store.config)
        self._views: dict[str, Any] = {}
        self._sqlite = _SqliteRead(self._store.config) if self._store.config.online_store.type == "sqlite" else None
        self._cache = TtlCache(cache_ttl_s)
        # Feast's SQLite connection belongs to the thread that opened it: use one thread, always.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")

    async def fetch(self, spec: ModelSpec, entity_ids: Sequence[EntityId]) -> dict[EntityId, np.ndarray | None]:
        """Feature rows (in the spec's order) by entity id; None where the store has no complete row."""
        unique = list(dict.fromkeys(entity_ids))
        if not unique:
            return {}
        now = time.monotonic()
        cached, missing = self._cache.get_many(((spec.store_features, e) for e in unique), now)
        rows: dict[EntityId, np.ndarray | None] = {key[1]: row for key, row in cached.items()}  # type: ignore[index]
        if missing:
            loop = asyncio.get_running_loop()
            try:
                read = await loop.run_in_executor(self._thread, self._read, spec, [key[1] for key in missing])  # type: ignore[index]
            except (sqlite3.Error, RedisError, OSError) as e:
                raise FeatureStoreUnavailable(f"feature store read failed: {e}") from e
            self._cache.put_many({(spec.store_features, e): row for e, row in read.items()}, now)
            rows.update(read)
        return rows

    def _read(self, spec: ModelSpec, unique: list[EntityId]) -> dict[EntityId, np.ndarray | None]:
        keys = [
            self._entity_key(join_keys=[spec.entity_key], entity_values=[_entity_value(self._value, e)]) for e in unique
        ]
        matrix = np.full((len(unique), len(spec.store_features)), np.nan, dtype=np.float32)
        for view_name, columns in _by_view(spec).items():
            names = [name for name, _ in columns]
            if self._sqlite is not None:
                stored = self._sqlite.read(self._view(view_name), keys)
            else:
                stored = [
                    v
                    for _, v in self._provider.online_read(
                        config=self._store.config,
                        table=self._view(view_name),
                        entity_keys=keys,
                        requested_features=names,
                    )
                ]
            for row, values in enumerate(stored):
                if values is None:
                    continue
                for name, column in columns:
                    if (value := values.get(name)) is not None and (kind := value.WhichOneof("val")) is not None:
                        matrix[row, column] = getattr(value, kind)
        missing = np.isnan(matrix).any(axis=1)
        return {entity: None if missing[i] else matrix[i] for i, entity in enumerate(unique)}

    def _view(self, name: str) -> Any:
        if name not in self._views:
            self._views[name] = self._store.get_feature_view(name)
        return self._views[name]

    def close(self) -> None:
        self._thread.shutdown(wait=False)


class _SqliteRead:
    """Feast's SQLite online read (its table, its key serialisation, one query per batch) without
    the `event_ts` column, whose datetime conversion per value the worker has no use for."""

    def __init__(self, config: Any) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import compute_table_id
        from feast.infra.online_stores.sqlite import SqliteOnlineStore
        from feast.protos.feast.types.Value_pb2 import Value

        self._config = config
        self._serialize, self._table_id, self._parse = serialize_entity_key, compute_table_id, Value.FromString
        self._path = SqliteOnlineStore._get_db_path(config)
        self._conn: sqlite3.Connection | None = None  # opened on the thread that reads

    def read(self, view: Any, keys: list[Any]) -> list[dict[str, Any] | None]:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path)
            # Values are fetched row by row from the table's pages; mapped pages skip a copy each.
            self._conn.execute("PRAGMA mmap_size = 268435456")
        version = self._config.entity_key_serialization_version
        serialized = [self._serialize(key, entity_key_serialization_version=version) for key in keys]
        versioning = getattr(self._config.registry, "enable_online_feature_view_versioning", False)
        table = '"' + self._table_id(self._config.project, view, versioning).replace('"', '""') + '"'
        found: dict[bytes, dict[str, Any]] = {}
        query = f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN ({','.join('?' * len(keys))})"
        for key, name, value in self._conn.execute(query, serialized):
            found.setdefault(key, {})[name] = self._parse(value)
        return [found.get(key) for key in serialized]


def _by_view(spec: ModelSpec) -> dict[str, list[tuple[str, int]]]:
    """`view:feature` refs → feature names and their column in the spec's order, per view."""
    views: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for column, ref in enumerate(spec.store_features):
        view, name = ref.split(":", 1)
        views[view].append((name, column))
    return views


def _entity_value(value_type: Any, entity: EntityId) -> Any:
    return value_type(string_val=entity) if isinstance(entity, str) else value_type(int64_val=entity)


def rows_by_entity(
    spec: ModelSpec, unique: list[EntityId], response: dict[str, list[Any]]
) -> dict[EntityId, np.ndarray | None]:
    """Pure: Feast's column-wise `get_online_features` response → one float32 row per entity, None
    when any value is missing (the reference the direct read is tested against)."""
    columns = [response[name] for name in spec.store_feature_names]
    rows: dict[EntityId, np.ndarray | None] = {}
    for i, entity in enumerate(unique):
        values = [column[i] for column in columns]
        rows[entity] = None if any(v is None for v in values) else np.asarray(values, dtype=np.float32)
    return rows
