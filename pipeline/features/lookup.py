"""Batch feature lookup from the Feast online store: one read per batch, unique entities only.

`FeatureStore.get_online_features` spends more Python per entity building and converting protos
than the store read itself takes, so the worker calls the online store's own `online_read` (through
Feast's provider: Feast's key serialisation, table layout and registry, unchanged) and turns the
values straight into float rows. On SQLite (the default store) it runs the same query itself,
without the timestamp columns (Feast parses a datetime per feature value), writes each value
straight into the batch's matrix, and remembers each entity's serialised key (a key is read again
whenever its cached row expires): docs/performance.md#sqlite-feature-read. A test keeps the result
identical to `get_online_features` on SQLite and Redis. Rows are reused: those of views fed only by
materialisation until the registry records the next one (`materialisations`), the others for
`PIPELINE_FEAST__CACHE_TTL_S` seconds (docs/performance.md#feature-cache).
"""

from __future__ import annotations

import asyncio
import functools
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import structlog
from redis.exceptions import RedisError

from pipeline import metrics
from pipeline.errors import FeatureStoreUnavailable
from pipeline.features.cache import TtlCache
from pipeline.features.feast_import import import_feast
from pipeline.features.materialisations import Materialisations, fed_by_push
from pipeline.models.spec import ModelSpec
from pipeline.settings import FeastSettings

log = structlog.get_logger(__name__)

EntityId = int | str

# Serialised entity keys kept for reuse (~100 bytes each): enough for every hot account of a
# worker; a key forgotten is merely serialised again.
_KEYS_REMEMBERED = 1 << 16

_CACHED, _READ = metrics.FEATURE_ROWS.labels("cache"), metrics.FEATURE_ROWS.labels("store")


class FeatureLookup:
    def __init__(
        self,
        repo_path: Path,
        cache_ttl_s: float = 0.0,
        *,
        hold_until_materialised: bool = False,
        registry_poll_s: float = 5.0,
        max_rows: int | None = None,
    ) -> None:
        """Rows reused for `cache_ttl_s` (0: none reused, held or not); with `hold_until_materialised`,
        those of views fed only by materialisation until the registry (looked at every
        `registry_poll_s`) records the next one. At most `max_rows` rows of each kind are kept."""
        feast = import_feast()  # heavy, kept out of module import time
        from feast.infra.provider import get_provider

        self._store = feast.FeatureStore(repo_path=str(repo_path))
        self._provider = get_provider(self._store.config)
        self._views: dict[str, Any] = {}
        self._sqlite = _SqliteRead(self._store.config) if self._store.config.online_store.type == "sqlite" else None
        if self._store.config.online_store.type == "redis":
            _fail_fast(self._provider.online_store, self._store.config.online_store)
        self._cache = TtlCache(cache_ttl_s, max_rows)
        hold = hold_until_materialised and cache_ttl_s > 0
        self._held = TtlCache(math.inf, max_rows) if hold else None
        self._materialisations = Materialisations(self._store, registry_poll_s) if hold else None
        self._cache_of: dict[tuple[str, ...], TtlCache] = {}  # by the spec's features
        # Feast's SQLite connection belongs to the thread that opened it: use one thread, always.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")

    @classmethod
    def from_settings(cls, feast: FeastSettings) -> FeatureLookup:
        return cls(
            feast.repo_path,
            feast.cache_ttl_s,
            hold_until_materialised=feast.hold_until_materialised,
            registry_poll_s=feast.registry_poll_s,
            max_rows=feast.cache_max_rows,
        )

    async def fetch(self, spec: ModelSpec, entity_ids: Sequence[EntityId]) -> dict[EntityId, np.ndarray | None]:
        """Feature rows (in the spec's order) by entity id; None where the store has no complete row."""
        unique = list(dict.fromkeys(entity_ids))
        if not unique:
            return {}
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        cache = self._cache_for(spec)
        watch = self._materialisations if cache is self._held else None
        if (
            watch is not None
            and watch.due(now)
            and await loop.run_in_executor(self._thread, self._materialised, watch, now)
        ):
            cache.clear()
        cached, missing = cache.get_many(((spec.store_features, e) for e in unique), now)
        rows: dict[EntityId, np.ndarray | None] = {key[1]: row for key, row in cached.items()}  # type: ignore[index]
        _CACHED.inc(len(cached))
        if missing:
            _READ.inc(len(missing))
            try:
                read = await loop.run_in_executor(self._thread, self._read, spec, [key[1] for key in missing])  # type: ignore[index]
            except (sqlite3.Error, RedisError, OSError) as e:
                raise FeatureStoreUnavailable(f"feature store read failed: {e}") from e
            cache.put_many({(spec.store_features, e): row for e, row in read.items()}, now)
            rows.update(read)
        return rows

    def _cache_for(self, spec: ModelSpec) -> TtlCache:
        """Held rows for a spec whose views are all fed by materialisation alone; else the TTL's."""
        if (found := self._cache_of.get(spec.store_features)) is None:
            held = self._held is not None and not any(fed_by_push(self._view(name)) for name in _by_view(spec))
            found = self._cache_of[spec.store_features] = self._held if held and self._held is not None else self._cache
        return found

    @staticmethod
    def _materialised(watch: Materialisations, now: float) -> bool:
        """Whether held rows must go: a materialisation recorded, or the registry unreadable (what it
        would say is unknown, so nothing held is trusted)."""
        try:
            moved = watch.moved(now)
        except Exception as e:  # noqa: BLE001 -- any registry's failure (file, SQL, remote): read the store
            log.warning("feature_registry_unreadable", error=str(e))
            return True
        if moved:
            log.info("feature_rows_dropped", reason="a feature view was materialised")
        return moved

    def _read(self, spec: ModelSpec, unique: list[EntityId]) -> dict[EntityId, np.ndarray | None]:
        matrix = np.full((len(unique), len(spec.store_features)), np.nan, dtype=np.float32)
        for view_name, columns in _by_view(spec).items():
            if self._sqlite is not None:
                self._sqlite.read(self._view(view_name), spec.entity_key, unique, dict(columns), matrix)
                continue
            keys = [_entity_key(spec.entity_key, e) for e in unique]
            stored = self._provider.online_read(
                config=self._store.config,
                table=self._view(view_name),
                entity_keys=keys,
                requested_features=[name for name, _ in columns],
            )
            for row, (_, values) in enumerate(stored):
                if values is None:
                    continue
                for name, column in columns:
                    if (value := values.get(name)) is not None and (kind := value.WhichOneof("val")) is not None:
                        matrix[row, column] = getattr(value, kind)
        # Per row: numpy's stubs type a reduction along an axis as a scalar or an array.
        missing = cast("npt.NDArray[np.bool_]", np.isnan(matrix).any(axis=1))
        return {entity: None if missing[i] else matrix[i] for i, entity in enumerate(unique)}

    def _view(self, name: str) -> Any:
        if name not in self._views:
            self._views[name] = self._store.get_feature_view(name)
        return self._views[name]

    def close(self) -> None:
        self._thread.shutdown(wait=False)


class _SqliteRead:
    """Feast's SQLite online read (its table, its key serialisation, one query per batch) without
    the `event_ts` column, whose datetime conversion per value the worker has no use for; values go
    straight into the caller's matrix, with no proto dict per entity in between."""

    def __init__(self, config: Any) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import compute_table_id
        from feast.infra.online_stores.sqlite import SqliteOnlineStore
        from feast.protos.feast.types.Value_pb2 import Value

        self._config = config
        self._table_id, self._parse = compute_table_id, Value.FromString
        self._path = SqliteOnlineStore._get_db_path(config)
        self._conn: sqlite3.Connection | None = None  # opened on the thread that reads
        version = config.entity_key_serialization_version

        # Feast's serialisation of a key, remembered for the entities seen most recently: a key is
        # read again each time its cached row expires, and building plus serialising its protos is
        # a large share of a small read's CPU (docs/performance.md#sqlite-feature-read).
        @functools.lru_cache(maxsize=_KEYS_REMEMBERED)
        def serialized(join_key: str, entity: EntityId) -> bytes:
            return serialize_entity_key(_entity_key(join_key, entity), entity_key_serialization_version=version)

        self._serialized = serialized

    def read(
        self, view: Any, join_key: str, entities: list[EntityId], columns: dict[str, int], matrix: np.ndarray
    ) -> None:
        """Fills `matrix[i, columns[name]]` with entity i's stored `name`; leaves what is absent."""
        if self._conn is None:
            self._conn = sqlite3.connect(self._path)
            # Values are fetched row by row from the table's pages; mapped pages skip a copy each.
            self._conn.execute("PRAGMA mmap_size = 268435456")
        serialized = [self._serialized(join_key, e) for e in entities]
        rows = {key: i for i, key in enumerate(serialized)}
        versioning = getattr(self._config.registry, "enable_online_feature_view_versioning", False)
        table = '"' + self._table_id(self._config.project, view, versioning).replace('"', '""') + '"'
        marks = ",".join("?" * len(serialized))
        query = f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN ({marks})"
        parse = self._parse
        for key, name, blob in self._conn.execute(query, serialized):
            if (column := columns.get(name)) is not None:
                value = parse(blob)
                if (kind := value.WhichOneof("val")) is not None:
                    matrix[rows[key], column] = getattr(value, kind)


def _fail_fast(online_store: Any, config: Any) -> None:
    """One immediate retry in the Redis client (a pooled connection that died with a restart), no
    more: redis-py's default backs off for up to 14 s inside one call, which hides an outage from the
    worker's own retry policy (its budget, its metrics and its dead letters)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    online_store._get_client(config).set_retry(Retry(NoBackoff(), 1))


def _by_view(spec: ModelSpec) -> dict[str, list[tuple[str, int]]]:
    """`view:feature` refs → feature names and their column in the spec's order, per view."""
    views: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for column, ref in enumerate(spec.store_features):
        view, name = ref.split(":", 1)
        views[view].append((name, column))
    return views


def _entity_key(join_key: str, entity: EntityId) -> Any:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value(string_val=entity) if isinstance(entity, str) else Value(int64_val=entity)
    return EntityKey(join_keys=[join_key], entity_values=[value])


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
