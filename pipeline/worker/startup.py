"""What a worker checks and opens before it joins its group: the topics' shape, the results topic's
retention, and its state store (for the results topic as it is now: one deleted and created again is
another topic, whose offsets the store did not record)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaException, TopicCollection

from pipeline import topics
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from pipeline.worker.store import StateStore

_NO_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # the zero id (str of Uuid(0, 0)): a broker without topic ids


def check_copartitioned(settings: Settings) -> int:
    """The requests topic's partition count; the results topic must have at least as many."""
    requests = topics.partition_count(settings, settings.topics.requests)
    results = topics.partition_count(settings, settings.topics.results)
    if results < requests:
        raise ConfigurationError(
            f"{settings.topics.results} has {results} partitions, fewer than {settings.topics.requests} ({requests}): "
            "each result goes to the partition numbered like its request's (it is the dedup state's changelog); "
            "raise the results topic's partitions in topics/topics.yaml and run `pipeline topics apply`"
        )
    return requests


def check_retention(settings: Settings) -> None:
    """The results topic must keep records at least as long as the dedup window: what it has
    dropped, a worker taking a partition over cannot know was scored, and would score again."""
    config = topics.topic_config(settings, settings.topics.results)
    gap = retention_gap(config, settings.worker.dedup_window_s)
    if gap is not None:
        raise ConfigurationError(
            f"{settings.topics.results} {gap}, shorter than the dedup window "
            f"({settings.worker.dedup_window_s:g} s, PIPELINE_WORKER__DEDUP_WINDOW_S): a worker taking a partition "
            "over would score repeats of older events again; raise its retention.ms (topics/topics.yaml is what "
            "`pipeline topics apply` creates) or shorten the window"
        )


def retention_gap(config: dict[str, str], window_s: float) -> str | None:
    """Pure: why a topic with this config forgets records sooner than `window_s`, or None."""
    if "delete" not in config.get("cleanup.policy", "delete"):
        return None  # compacted only: the last result of every event_id stays
    retention_ms = int(config.get("retention.ms", "604800000"))
    if 0 <= retention_ms < window_s * 1000:
        return f"keeps records {retention_ms / 1000:g} s (retention.ms)"
    return None


def results_topic_id(settings: Settings, timeout_s: float = 30.0) -> str | None:
    """The results topic's id (KIP-516), which a topic deleted and created again under its name does
    not keep; None where the broker does not tell it."""
    name = settings.topics.results
    admin = topics.admin_client(settings)  # held until the answer is in: a dropped client cancels its requests
    try:
        found = admin.describe_topics(TopicCollection([name]), request_timeout=timeout_s)[name].result().topic_id
    except KafkaException:
        return None
    return None if found is None or str(found) == _NO_ID else str(found)


def open_store(settings: Settings, partitions: int, directory: Path | None = None) -> StateStore:
    """The worker's store, under PIPELINE_WORKER__STATE_DIR/<app_id> unless given a directory, for
    what its content must have been written for: a directory of another app id, topic or partition
    count is not trusted (StateStore wipes it). The worker's own (no directory given) is also checked
    against the results topic's id, asked of the broker: a directory recorded for a results topic since
    deleted is not trusted either, even where the new topic has grown past its recorded offsets."""
    worker = settings.worker
    identity = {
        "app_id": worker.app_id,
        "requests": settings.topics.requests,
        "results": settings.topics.results,
        "partitions": partitions,
    }
    path = directory or worker.state_dir / worker.app_id
    changelog_id = results_topic_id(settings) if directory is None else None
    return StateStore(path, identity, worker.dedup_window_s, worker.state_cache_mib << 20, changelog_id)
