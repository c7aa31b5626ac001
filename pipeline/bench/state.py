"""The `state` scenario group: the worker's dedup store (pipeline/worker/store.py) at a full window's size.

Each figure of memory comes from a process of its own (`pipeline bench-state ROLE DIR`, started by the
bench), so the bench's own heap stays out of it: `write` fills a store with `entries` results the size
of real ones, `serve` opens it again (a restarted worker: the time to its first lookup) and answers
batches of lookups, mostly misses, and `micro` times the dedup reads and writes of a batch against a
plain dict, the in-memory state the store replaced, in one process. Each writes its figures as JSON to
DIR/<role>.json. `rebuild` (in the bench's process) times a cold `changelog.Restorer` rebuild of one partition
from the bench's broker. What each measures: docs/performance.md#state.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from pipeline.bench.memory import status_mib
from pipeline.bench.stats import median, per_event_us, ratio
from pipeline.contract import result_record, utc_timestamp
from pipeline.kafka import clients
from pipeline.settings import Settings
from pipeline.worker import changelog, startup
from pipeline.worker.dedup import DedupState
from pipeline.worker.messages import DedupEntry
from pipeline.worker.store import StateStore

ROLES = ("write", "serve", "micro")
PARTITIONS = 12  # the requests topic's (topics/topics.yaml)
WRITE_BATCH = 1_024  # entries per store write: one partition's share of a commit
LOOKUP_BATCH = 1_024  # a worker's batch (PIPELINE_WORKER__BATCH_SIZE)
HIT_SHARE = 0.2  # of a batch's lookups: most events are new
_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd: index → key is a bijection that scatters neighbours
_MASK = (1 << 128) - 1
_STAMP = struct.Struct("<d")


# -- entries ----------------------------------------------------------------------------------------
def event_id(index: int) -> str:
    """A UUID-like event_id (32 hex digits), unique per index, in no order (as callers' ids arrive)."""
    return f"{(index * _MIX) & _MASK:032x}"


def partition_of(index: int) -> int:
    """The input partition entry `index` was written for (consecutive runs of WRITE_BATCH)."""
    return (index // WRITE_BATCH) % PARTITIONS


class Results:
    """Result bytes the size and shape of the worker's: one real record (contract.result_record, as the
    worker renders it) with each entry's event_id, and a score, label and latency that vary per entry,
    spliced in as text (rendering a record per entry would take most of the bench's time)."""

    _SCORES, _LATENCIES = 1_009, 1_013  # primes: ~1M combinations before one repeats

    def __init__(self, scored_at: str | None = None) -> None:
        record = result_record(
            event_id="<event>",
            model="fraud_scorer",
            model_version="1",
            score=0.111111,
            threshold=0.5,
            latency_ms=0.222,
            scored_at=scored_at or utc_timestamp(),
            entity={"account_id": 4242},
        )
        text = orjson.dumps(record).decode().replace("%", "%%")
        self._format = text.replace("<event>", "%s").replace("0.111111", "%s").replace('"legit"', '"%s"')
        self._format = self._format.replace("0.222", "%s")
        scores = [round((i * 7919 % self._SCORES) / self._SCORES, 6) for i in range(self._SCORES)]
        self._scores = [(orjson.dumps(v).decode(), "fraud" if v >= 0.5 else "legit") for v in scores]
        self._latencies = [orjson.dumps(round(5 + i * 0.0371, 3)).decode() for i in range(self._LATENCIES)]

    def __call__(self, index: int, key: str | None = None) -> bytes:
        score, label = self._scores[index % self._SCORES]
        latency = self._latencies[index % self._LATENCIES]
        return (self._format % (key or event_id(index), score, label, latency)).encode()


def batches(entries: int) -> Iterator[tuple[int, list[tuple[str, bytes, float]]]]:
    """(partition, entries) in the store's order of writes, each batch scored at one time."""
    results = Results()
    for start in range(0, entries, WRITE_BATCH):
        now = time.time()
        chunk = []
        for index in range(start, min(entries, start + WRITE_BATCH)):
            key = event_id(index)
            chunk.append((key, results(index, key), now))
        yield partition_of(start), chunk


def stored(chunk: list[tuple[str, bytes, float]], index: int) -> Iterator[tuple[str, int, float]]:
    """A batch's entries as the store holds them: each with where its result is (as if its batch were
    the `index`-th write of its results partition)."""
    offset = index * WRITE_BATCH
    return ((key, offset + i, at) for i, (key, _, at) in enumerate(chunk))


def lookup_indexes(entries: int, batch: int, rng: random.Random, fresh: Iterator[int]) -> list[int]:
    """One batch of entry indexes: HIT_SHARE of them stored (below `entries`), the rest never stored
    (`fresh`, at or past `entries`), shuffled."""
    hits = round(batch * HIT_SHARE) if entries else 0
    indexes = [rng.randrange(entries) for _ in range(hits)] + [next(fresh) for _ in range(batch - hits)]
    rng.shuffle(indexes)
    return indexes


def keys(indexes: Sequence[int]) -> list[tuple[int, str]]:
    """The (partition, event_id) of each entry, as the worker looks them up."""
    return [(partition_of(i), event_id(i)) for i in indexes]


# -- the child processes ----------------------------------------------------------------------------
def open_store(directory: Path, settings: Settings) -> StateStore:
    """A store written for `settings`' worker: the state group restarts one on it."""
    return startup.open_store(settings, PARTITIONS, directory)


def write(directory: Path, entries: int, settings: Settings) -> dict[str, Any]:
    """Fill a fresh store with `entries` entries, as commits do, then let its compactions finish (a
    worker filling its window over hours never runs this far ahead of them). CPU per entry counts
    every thread of the process (RocksDB's flushes and compactions too) and making the entries."""
    baseline = _rss()
    store = open_store(directory, settings)
    cpu, began = _cpu_s(), time.monotonic()
    written = sum(store.write(p, stored(chunk, i), None) for i, (p, chunk) in enumerate(batches(entries)))
    # Each partition's changelog offset, as commits record it: the results topic the worker restarted
    # on this store reads is empty, so 0 is its end (a warm restart with nothing to read back).
    store.write_values((), dict.fromkeys(range(PARTITIONS), 0))
    seconds = time.monotonic() - began
    rss_written = _rss()
    settled = settle(store)
    cpu = _cpu_s() - cpu
    figures = {
        "entries": written,
        "seconds": round(seconds, 3),
        "writes_per_s": round(written / seconds) if seconds > 0 else 0,
        "settle_s": round(settled, 3),
        "cpu_us_per_entry": per_event_us(cpu, written),
        "making_us_per_entry": making_us_per_entry(),
        "mean_result_bytes": mean_result_bytes(),
        "rss_mib_before_open": baseline,
        "rss_mib_written": rss_written,
        "rss_mib": _rss(),
        "peak_rss_mib": _rss("VmHWM"),
        "store": store.properties(),
    }
    store.close()
    return figures


def settle(store: StateStore, timeout_s: float = 600.0) -> float:
    """Wait until no flush or compaction is pending or running; returns the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        busy = store.properties()
        if not (busy["compaction-pending"] or busy["num-running-compactions"] or busy["num-running-flushes"]):
            break
        time.sleep(0.2)
    return time.monotonic() - began


def serve(directory: Path, entries: int, lookups: int, settings: Settings) -> dict[str, Any]:
    """Open the store again, serve a first lookup (a restarted worker's wait), then `lookups` more in
    batches, HIT_SHARE of them hits; each hit must come back."""
    baseline = _rss()
    began = time.monotonic()
    state = DedupState(open_store(directory, settings))
    opened = time.monotonic() - began
    first = state.get_many([(partition_of(0), event_id(0))], time.time())
    ready = time.monotonic() - began
    if entries and first[0] is None:
        raise AssertionError("the store lost entry 0")
    rss_open = _rss()
    rng, fresh = random.Random(7), iter(range(entries, entries + lookups + LOOKUP_BATCH))
    served = found = 0
    seconds = 0.0
    while served < lookups:
        batch = keys(lookup_indexes(entries, LOOKUP_BATCH, rng, fresh))
        start = time.perf_counter()
        values = state.get_many(batch, time.time())
        seconds += time.perf_counter() - start
        served += len(batch)
        found += sum(v is not None for v in values)
    expected = round(LOOKUP_BATCH * HIT_SHARE) * (served // LOOKUP_BATCH) if entries else 0
    if found != expected:
        raise AssertionError(f"{found} of {served} lookups found, {expected} expected")
    figures = {
        "open_s": round(opened, 3),
        "first_lookup_s": round(ready, 3),
        "lookups": served,
        "hits": found,
        "lookup_us_per_event": per_event_us(seconds, served),
        "rss_mib_before_open": baseline,
        "rss_mib_after_open": rss_open,
        "rss_mib": _rss(),
        "peak_rss_mib": _rss("VmHWM"),
        "store": state.store.properties(),
    }
    state.store.close()
    return figures


@dataclass(frozen=True)
class _Batch:
    keys: list[tuple[int, str]]
    results: list[bytes]


class _DictState:
    """The state before the store: one dict of event_id → stamp + result, written when scored."""

    def __init__(self, entries: int) -> None:
        self.entries: dict[str, bytes] = {}
        now = time.time()
        for _, chunk in batches(entries):
            for key, value, _ in chunk:
                self.entries[key] = _STAMP.pack(now) + value

    def lookup(self, batch: _Batch, now: float) -> Sequence[object | None]:
        values = self.entries
        return [None if (v := values.get(e)) is None else v[_STAMP.size :] for _, e in batch.keys]

    def remember(self, batch: _Batch, found: Sequence[object | None], now: float) -> None:
        values = self.entries
        for (_, event_id_), value, result_ in zip(batch.keys, found, batch.results, strict=True):
            if value is None:
                values[event_id_] = _STAMP.pack(now) + result_


class _StoreState:
    """The state now: DedupState's overlay over the store; a batch's new entries put in the overlay
    when scored and committed into the store after it (one commit per batch)."""

    def __init__(self, directory: Path, entries: int, settings: Settings) -> None:
        self.state = DedupState(open_store(directory, settings))
        for i, (partition, chunk) in enumerate(batches(entries)):
            self.state.store.write(partition, stored(chunk, i), None)
        settle(self.state.store)
        self.offsets = dict.fromkeys(range(PARTITIONS), 0)

    def lookup(self, batch: _Batch, now: float) -> Sequence[object | None]:
        return self.state.get_many(batch.keys, now)

    def remember(self, batch: _Batch, found: Sequence[object | None], now: float) -> None:
        state = self.state
        scored = [
            DedupEntry(event_id_, partition, result_)
            for (partition, event_id_), value, result_ in zip(batch.keys, found, batch.results, strict=True)
            if value is None
        ]
        state.put_many(scored)
        touched = {partition for _, partition, _ in scored}
        for partition in touched:
            self.offsets[partition] += 1
        state.committed(scored, {p: self.offsets[p] for p in touched}, now)


class _State(Protocol):
    def lookup(self, batch: _Batch, now: float) -> Sequence[object | None]: ...

    def remember(self, batch: _Batch, found: Sequence[object | None], now: float) -> None: ...


def micro(directory: Path, entries: int, batches_per_round: int, rounds: int, settings: Settings) -> dict[str, Any]:
    """Per event, a batch's dedup lookups (reads) and the writes of its new entries: a dict against
    DedupState over the store, both holding `entries` first, interleaved round by round on the same
    batches. Medians of the rounds, each round kept."""
    states: dict[str, _State] = {"dict": _DictState(entries), "store": _StoreState(directory, entries, settings)}
    rng, fresh = random.Random(11), iter(range(entries, 1 << 62))
    results = Results()
    rounds_us: dict[str, dict[str, list[float]]] = {name: {"read": [], "write": []} for name in states}
    for _ in range(rounds):
        work = []
        for _ in range(batches_per_round):
            indexes = lookup_indexes(entries, LOOKUP_BATCH, rng, fresh)
            work.append(_Batch(keys(indexes), [results(i) for i in indexes]))
        for name, state in states.items():
            read_s, write_s = _timed(state, work)
            rounds_us[name]["read"].append(per_event_us(read_s, len(work) * LOOKUP_BATCH))
            rounds_us[name]["write"].append(per_event_us(write_s, len(work) * LOOKUP_BATCH))
    store = states["store"]
    assert isinstance(store, _StoreState)
    store.state.store.close()
    figures: dict[str, Any] = {
        "entries": entries,
        "events_per_round": batches_per_round * LOOKUP_BATCH,
        "rounds": rounds,
        "hit_share": HIT_SHARE,
    }
    for name, phases in rounds_us.items():
        totals = [r + w for r, w in zip(phases["read"], phases["write"], strict=True)]
        figures[f"{name}_us_per_event"] = round(median(totals), 3)
        figures[f"{name}_read_us_per_event"] = median(phases["read"])
        figures[f"{name}_write_us_per_event"] = median(phases["write"])
    figures["store_over_dict"] = ratio(figures["store_us_per_event"], figures["dict_us_per_event"])
    figures["rounds_us_per_event"] = rounds_us
    return figures


def _timed(state: _State, work: Sequence[_Batch]) -> tuple[float, float]:
    """Seconds of `state`'s lookups and of its writes over every batch, the collector quiet first (as
    the worker's is)."""
    gc.collect()
    gc.freeze()
    read_s = write_s = 0.0
    for batch in work:
        now = time.time()
        start = time.perf_counter()
        found = state.lookup(batch, now)
        looked_up = time.perf_counter()
        state.remember(batch, found, now)
        read_s += looked_up - start
        write_s += time.perf_counter() - looked_up
    return read_s, write_s


def run_role(role: str, directory: Path, options: dict[str, int], settings: Settings) -> Path:
    """One child's work; its figures to DIR/<role>.json (returned)."""
    if role == "write":
        figures = write(directory, options["entries"], settings)
    elif role == "serve":
        figures = serve(directory, options["entries"], options["lookups"], settings)
    elif role == "micro":
        figures = micro(directory, options["entries"], options["batches"], options["rounds"], settings)
    else:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    out = directory / f"{role}.json"
    out.write_bytes(orjson.dumps(figures))
    return out


# -- the cold rebuild, from the broker ---------------------------------------------------------------
def publish_results(settings: Settings, entries: int, partition: int = 0) -> None:
    """`entries` results, keyed by event_id, onto one partition of the results topic (no transaction)."""
    # Uncompressed, as the worker's; aiokafka, which restore() reads with, has no lz4 codec here.
    producer = clients.producer(settings, {"linger.ms": 20})
    results = Results()
    for index in range(entries):
        key = event_id(index)
        while True:
            try:
                producer.produce(settings.topics.results, results(index, key), key.encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise TimeoutError(f"results not all delivered to {settings.topics.results}")


async def rebuild(settings: Settings, directory: Path, entries: int, partition: int = 0) -> dict[str, Any]:
    """Time `changelog.Restorer` rebuilding `partition` into an empty store (cold) from what
    `publish_results` left on the results topic."""
    store = open_store(directory, settings)
    restorer = changelog.Restorer(settings, store)
    try:
        [(_, restored)] = [r async for r in restorer.restore([partition])]
    finally:
        await restorer.close()
        store.close()
    if restored.mode != "cold" or restored.entries != entries:
        raise AssertionError(f"restored {restored.fields()}, expected {entries} entries cold")
    return restored.fields()


# -- helpers --------------------------------------------------------------------------------------------
def mean_result_bytes(sample: int = 1_000) -> int:
    results = Results()
    return round(sum(len(results(i)) for i in range(sample)) / sample)


def making_us_per_entry(sample: int = 50_000) -> float:
    """What making one entry (its event_id and result) costs the writer, apart from storing it."""
    began = time.perf_counter()
    made = sum(len(chunk) for _, chunk in batches(sample))
    return per_event_us(time.perf_counter() - began, made)


def disk_bytes(directory: Path) -> int:
    """What `du` counts: allocated blocks of every file under `directory`."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _rss(field: str = "VmRSS") -> float:
    return round(status_mib(os.getpid(), field) or 0.0, 1)
