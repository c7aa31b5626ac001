"""The committed dedup entries of a worker's input partitions, on local disk (RocksDB, via rocksdict).

One store per state directory, one worker per store. An entry is keyed by its input partition and
`event_id` and holds the time it was stored and where its result is: the results offsets between
which the transaction that committed it wrote it (a repeat with a reply address reads the record
back; docs/performance.md#dedup-store-on-the-hot-path). Per partition, the store also records the
results offset up to which it holds the changelog, written in the same batch as the entries of a
commit, so after any crash the two agree. Expiry is RocksDB's TTL (compaction drops entries older than
the window, nothing per entry in Python); a read also checks an entry's own time. A directory written
for another app id, topic or partition count, or for another incarnation of the results topic (deleted
and created again under its name: its offsets are not the recorded ones), or one RocksDB cannot open,
is wiped and rebuilt from the changelog (docs/architecture.md#the-dedup-state-and-its-changelog). The
directory is locked before any of that: a live worker's is never read nor wiped by another.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from pipeline.errors import ConfigurationError

log = structlog.get_logger(__name__)

_VALUE = struct.Struct("<dqq")  # an entry's value: the time it was stored, where its result is
_FORMAT = 2  # of the entries' values: a directory written in another is rebuilt
_PARTITION = struct.Struct(">H")
_OFFSET = struct.Struct("<q")
_OFFSETS = "offsets"  # the column family of per-partition offsets, apart from the entries
_CHANGELOG_ID = "changelog_id"  # in identity.json: the id of the topic whose offsets the store records
_PROPERTIES = (
    "estimate-num-keys",
    "block-cache-usage",  # the shared cache: data, index and filter blocks
    "block-cache-pinned-usage",
    "cur-size-all-mem-tables",
    "estimate-table-readers-mem",  # index and filter blocks held outside the cache
    "total-sst-files-size",
    "num-files-at-level0",
    "compaction-pending",
    "num-running-compactions",
    "num-running-flushes",
)


_PREFIXES = [_PARTITION.pack(p) for p in range(1 << 16)]  # every partition's key prefix, made once


UNBOUNDED = 1 << 62  # a result's end offset when not known: read up to the partition's end


class Located(NamedTuple):
    """Where a stored entry's result is: among the records of its results partition from `start` up to
    (not including) `end`, keyed by its event_id."""

    start: int
    end: int


def encode_value(stored_at: float, start: int, end: int) -> bytes:
    """An entry's value: the time it was stored, and the results offsets its result lies between."""
    return _VALUE.pack(stored_at, start, end)


class StoreInUse(ConfigurationError):
    """Another live worker holds this state directory."""


class StateStore:
    def __init__(
        self,
        directory: Path,
        identity: dict[str, Any],
        window_s: float,
        cache_bytes: int,
        changelog_id: str | None = None,
    ) -> None:
        """`identity`: what the directory's content must have been written for; a mismatch wipes it.
        `changelog_id`: the id of the topic the recorded offsets are of (the results topic's); a
        directory recorded for another is wiped too; None (not known) is not compared."""
        self.directory = directory
        self.window_s = window_s
        self._identity = identity | {"format": _FORMAT}
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(directory)
        try:
            self._db = self._open(cache_bytes, changelog_id)
        except BaseException:
            os.close(self._lock)
            raise
        self._offsets = self._db.get_column_family_handle(_OFFSETS)
        self._offsets_view = self._db.get_column_family(_OFFSETS)
        # The write-ahead log, unsynced: a killed process loses nothing (the OS has it); a lost host may
        # lose the tail, which the changelog gives back from the last offset that reached the disk.
        self._write = WriteOptions()

    # -- reads ---------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[tuple[int, str]], now: float) -> list[Located | None]:
        """Where each (partition, event_id)'s result is, or None (never stored, or older than the
        window): one multi-get for the whole batch, whatever partitions it spans."""
        prefixes = _PREFIXES
        values: list[bytes | None] = self._db.get([prefixes[partition] + e.encode() for partition, e in keys])  # type: ignore[assignment]
        cutoff = now - self.window_s
        return [None if v is None else _located(v, cutoff) for v in values]

    def estimated_entries(self) -> int:
        """RocksDB's estimate: entries expired but not yet compacted away count too."""
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def properties(self) -> dict[str, int]:
        """What RocksDB says holds the entries' memory (bytes) and disk, and how many there are
        (the bench's state group; tools)."""
        return {name: int(self._db.property_int_value(f"rocksdb.{name}") or 0) for name in _PROPERTIES}

    def offset(self, partition: int) -> int | None:
        """The results offset up to which this partition's changelog is in the store."""
        value = self._offsets_view.get(_PREFIXES[partition])
        return None if value is None else int(_OFFSET.unpack(value)[0])

    # -- writes --------------------------------------------------------------------------------
    def write(self, partition: int, entries: Iterable[tuple[str, int, float]], offset: int | None) -> int:
        """Entries read back from one results partition (event_id, the result's offset, its time) and,
        when known, the results offset they bring the partition up to, in one atomic batch. Returns
        the entries written."""
        values = ((partition, e, _VALUE.pack(t, o, o + 1)) for e, o, t in entries)
        return self.write_values(values, {} if offset is None else {partition: offset})

    def write_values(self, entries: Iterable[tuple[int, str, bytes]], offsets: dict[int, int]) -> int:
        """What one transaction committed: (partition, event_id, value as `encode_value` made it) and
        the results offsets, in one atomic batch (one write-ahead-log append per commit); the values
        go in as they are. Returns the entries written."""
        batch = WriteBatch(raw_mode=True)
        put, prefixes = batch.put, _PREFIXES
        count = 0
        for partition, event_id, value in entries:
            put(prefixes[partition] + event_id.encode(), value)
            count += 1
        for partition, offset in offsets.items():
            batch.put(prefixes[partition], _OFFSET.pack(offset), self._offsets)
        self._db.write(batch, self._write)
        return count

    def forget(self, partition: int) -> None:
        """Everything of one partition (before it is rebuilt from the start of the window)."""
        key = _PREFIXES[partition]
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(key, _PARTITION.pack(partition + 1))
        batch.delete(key, self._offsets)
        self._db.write(batch, self._write)

    def compact(self) -> None:
        """Let RocksDB drop what has expired now rather than at its next compaction (tests, tools)."""
        self._db.flush()
        self._db.compact_range(None, None)

    def close(self) -> None:
        del self._offsets, self._offsets_view  # handles keep the database open
        self._db.close()
        os.close(self._lock)

    # -- opening -------------------------------------------------------------------------------
    def _open(self, cache_bytes: int, changelog_id: str | None) -> Rdict:
        identity_file = self.directory / "identity.json"
        path = self.directory / "rocksdb"
        found = _read_identity(identity_file)
        recorded_id = None if found is None else found.pop(_CHANGELOG_ID, None)
        other_topic = None not in (recorded_id, changelog_id) and recorded_id != changelog_id
        if found is not None and (found != self._identity or other_topic):
            expected = self._identity | {_CHANGELOG_ID: changelog_id}
            log.warning("state_mismatch", directory=str(self.directory), found=found, expected=expected)
            _wipe(path)
            recorded_id = None
        try:
            db = self._rdict(path, cache_bytes)
        except Exception as e:  # rocksdict raises plain Exceptions; the message says why
            if "lock" in str(e).lower():
                raise StoreInUse(_in_use(self.directory)) from e
            log.warning("state_unreadable", directory=str(self.directory), error=str(e))
            _wipe(path)
            db = self._rdict(path, cache_bytes)
        known_id = changelog_id or recorded_id
        written = self._identity if known_id is None else self._identity | {_CHANGELOG_ID: known_id}
        identity_file.write_text(json.dumps(written, sort_keys=True))
        return db

    def _rdict(self, path: Path, cache_bytes: int) -> Rdict:
        cache = Cache(cache_bytes)
        ttl = AccessType.with_ttl(max(1, int(self.window_s) + 1))
        if path.exists() and _OFFSETS in Rdict.list_cf(str(path)):
            return Rdict(str(path), _options(cache), column_families={_OFFSETS: _options(cache)}, access_type=ttl)
        db = Rdict(str(path), _options(cache), access_type=ttl)
        db.create_column_family(_OFFSETS, _options(cache))
        return db


def _located(value: bytes, cutoff: float) -> Located | None:
    stored_at, start, end = _VALUE.unpack(value)
    return None if stored_at < cutoff else Located(start, end)


def _options(cache: Cache) -> Options:
    """Memory bounded whatever the entries: a shared block cache holding the index and filter blocks too,
    small memtables; bloom filters, since most lookups are misses (new events). Index and filters are
    partitioned into blocks of about 4 KiB, only their top levels pinned: a whole file's filter (~1 MiB
    at 10M entries) would not fit a shard of the cache, and every lookup would read it again
    (docs/performance.md#partitioned-index-and-filters)."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(4096)
    table.set_pin_top_level_index_and_filter(True)
    options.set_block_based_table_factory(table)
    # Most lookups miss (new events): a whole-key bloom filter over the memtables answers them without
    # searching the skiplists, and 32 MiB memtables leave fewer level-0 files for each miss to probe
    # (docs/performance.md#dedup-store-on-the-hot-path).
    options.set_memtable_prefix_bloom_ratio(0.1)
    options.set_memtable_whole_key_filtering(True)
    options.set_write_buffer_size(32 << 20)
    options.set_max_write_buffer_number(2)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_max_background_jobs(2)
    options.set_keep_log_file_num(2)
    return options


def _lock(directory: Path) -> int:
    """An exclusive lock on the directory for the store's life, taken before its content is read or
    wiped (RocksDB's own lock comes only with the open, after a mismatch has wiped it); released with
    the descriptor, by close() or the process's end."""
    descriptor = os.open(directory / "worker.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(descriptor)
        raise StoreInUse(_in_use(directory)) from e
    return descriptor


def _in_use(directory: Path) -> str:
    return (
        f"the state directory {directory} is in use by another worker; give each worker its own "
        "PIPELINE_WORKER__STATE_DIR"
    )


def _read_identity(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: never trusted
    return value if isinstance(value, dict) else {}


def _wipe(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
