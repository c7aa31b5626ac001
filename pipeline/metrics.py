"""Prometheus metrics for every stage. Worker and gateway each expose their own registry on /metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import structlog
from confluent_kafka import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from pipeline.contract import ERROR_CODES

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS = Counter("pipeline_events_total", "Requests consumed, by outcome", ["outcome"])
DEAD_LETTERS = Counter("pipeline_dead_letters_total", "Dead letters written, by error code", ["code"])
SHADOW_FAILURES = Counter(
    "pipeline_shadow_failures_total",
    "Shadowed events the candidate could not score (left unshadowed), by model",
    ["model"],
)
SCORED = Counter(
    "pipeline_scored_total",
    "Events scored, by model, the version that scored them and its arm (stable, canary, shadow, backtest)",
    ["model", "version", "arm"],
)
SCORES = Histogram(
    "pipeline_score",
    "Scores given, by model and arm: the arms' distributions side by side (the rollout dashboard's compare)",
    ["model", "arm"],
    buckets=tuple(round(0.1 * i, 1) for i in range(1, 10)),
)
RETRIES = Counter("pipeline_retries_total", "Retries of a transient failure, by stage (inference, features)", ["stage"])
TRANSACTION_ABORTS = Counter("pipeline_transaction_aborts_total", "Aborted transactions, by reason", ["reason"])
REBALANCES = Counter("pipeline_rebalances_total", "Partition assignments and revocations", ["change"])
TRANSACTIONS = Counter("pipeline_transactions_total", "Committed transactions, by transaction lane", ["lane"])
KAFKA_ERRORS = Counter(
    "pipeline_kafka_errors_total",
    "Errors librdkafka reported outside a call (a broker unreachable, all brokers down), by client and code",
    ["client", "code"],
)
FEATURE_ROWS = Counter(
    "pipeline_feature_rows_total", "Entities' feature rows looked up, by source (cache or store)", ["source"]
)
DEDUP_ENTRIES = Gauge(
    "pipeline_dedup_entries", "Scored event_ids remembered for dedup (the store's estimate, expired ones included)"
)
STATE_RESTORES = Counter(
    "pipeline_state_restores_total", "Partitions whose dedup state was restored, by mode (warm, cold)", ["mode"]
)
STATE_RESTORED_ENTRIES = Counter(
    "pipeline_state_restored_entries_total",
    "Dedup entries read back from the changelog, by mode (warm, cold; reload: after an abort)",
    ["mode"],
)
STAGE_SECONDS = Histogram("pipeline_stage_seconds", "Time per batch in each stage", ["stage"], buckets=_LATENCY_BUCKETS)
EVENT_LATENCY = Histogram(
    "pipeline_event_latency_seconds", "From consume of a request to produce of its result", buckets=_LATENCY_BUCKETS
)
QUEUE_WAIT = Histogram(
    "pipeline_queue_wait_seconds",
    "From a request's append to its topic to the start of its scoring by a worker",
    buckets=(*_LATENCY_BUCKETS, 30.0, 60.0),
)
BATCH_SIZE = Histogram(
    "pipeline_batch_size", "Requests per processed batch", buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
)
TRANSACTION_MESSAGES = Histogram(
    "pipeline_transaction_messages",
    "Messages (results, dead letters, replies) per committed transaction",
    buckets=(1, 8, 32, 128, 512, 2048, 8192, 32768),
)
ANSWERS = Counter(
    "pipeline_answers_total",
    "Replies to HTTP callers sent outside a transaction: once scored, or once committed over a direct link",
)
ANSWERS_FAILED = Counter("pipeline_answers_failed_total", "Replies to HTTP callers that could not be delivered")
ANSWERS_DIRECT = Counter(
    "pipeline_answers_direct_total", "Of those, sent straight to the bridge that asked (its answer-to address)"
)

GATEWAY_REQUESTS = Counter("gateway_requests_total", "HTTP bridge responses, by route and status", ["route", "status"])
GATEWAY_LATENCY = Histogram("gateway_request_seconds", "HTTP bridge latency", ["route"], buckets=_LATENCY_BUCKETS)
GATEWAY_STAGE_SECONDS = Histogram(
    "gateway_stage_seconds",
    "HTTP bridge time per call: publishing the request(s) to Kafka, then awaiting the answer(s)",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
GATEWAY_IN_FLIGHT = Gauge("gateway_in_flight_requests", "Requests waiting for their result")
GATEWAY_ANSWERS = Counter(
    "gateway_answers_total", "Answers received, by route (direct from a worker, or the replies topic)", ["route"]
)
GATEWAY_PENDING = Gauge("gateway_pending_replies", "Correlation ids waiting for a reply on this instance")
CONSUMED_RESULTS = Counter(
    "pipeline_consumer_results_total", "Results read by a consumer, by consumer and outcome", ["consumer", "outcome"]
)
GUARD_WINDOWS = Counter(
    "pipeline_guard_windows_total",
    "Windows the rollout guard judged a model's canary in, by verdict (healthy, unhealthy, too_few)",
    ["model", "verdict"],
)
GUARD_ROLLBACKS = Counter("pipeline_guard_rollbacks_total", "Canaries the rollout guard rolled back", ["model"])
ALERTS = Counter("pipeline_alerts_total", "Alerts published, by kind and rule", ["kind", "rule"])
ALERTS_SKIPPED = Counter(
    "pipeline_alerts_repeated_total", "Alerts decided again and not published twice (already on the topic)", ["kind"]
)
ALERT_LATENCY = Histogram(
    "pipeline_alert_latency_seconds",
    "From the deciding result's record time to its alert's publishing",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
DRIFT_PSI = Gauge("pipeline_drift_psi", "PSI of a window against the training reference", ["model", "feature"])
DRIFT_KS = Gauge(
    "pipeline_drift_ks", "Kolmogorov-Smirnov D of a window against the training reference", ["model", "feature"]
)

LIVE_LAG = Gauge("pipeline_backfill_live_lag", "The live workers' lag in requests, as a backfill worker last read it")
BACKFILL_YIELDING = Gauge("pipeline_backfill_yielding", "1 while a backfill worker pauses for the live workers' lag")
LIVE_LAG_UNREADABLE = Counter(
    "pipeline_backfill_live_lag_unreadable_total", "Reads of the live workers' lag by a backfill worker that failed"
)

# `pipeline scale`: what it reads, what it decides, what it does.
SCALING_LAG = Gauge("pipeline_scaling_lag_records", "The group's lag on the requests topic, in requests")
SCALING_LAG_SECONDS = Gauge("pipeline_scaling_lag_seconds", "Age of the oldest request not yet consumed")
SCALING_RATE = Gauge(
    "pipeline_scaling_rate_per_second", "Requests/s: arriving, consumed by the group, by one worker", ["rate"]
)
SCALING_WORKER_RATE = Gauge(
    "pipeline_scaling_worker_rate_per_second", "Each group member's consume rate, by client id", ["worker"]
)
SCALING_DESIRED = Gauge("pipeline_scaling_desired_workers", "The policy's desired number of workers")
SCALING_WORKERS = Gauge("pipeline_scaling_workers", "Workers running (the supervisor's), or members of the group")
SCALING_GROUP_MEMBERS = Gauge("pipeline_scaling_group_members", "Members of the workers' consumer group")
SCALING_EVENTS = Counter("pipeline_scaling_events_total", "Changes of the desired count, by direction", ["direction"])
SCALING_WORKER_START = Gauge("pipeline_scaling_worker_start_seconds", "From a scale-up to its workers in the group")
SCALING_WORKER_EXITS = Counter("pipeline_scaling_worker_exits_total", "Workers that exited without being stopped")
SCALING_LAG_UNREADABLE = Counter("pipeline_scaling_lag_unreadable_total", "Readings of the lag that failed")
SCALING_SATURATED = Gauge(
    "pipeline_scaling_saturated",
    "1 while the policy holds the count because more workers did not (or would not) add: by cause",
    ["reason"],
)
SATURATION_CAUSES = ("CPU", "Triton queue", "broker")
SCALING_MARGINAL_GAIN = Gauge(
    "pipeline_scaling_marginal_gain",
    "The last step up's added drain rate over what its workers were expected to add (1: each added a worker's rate)",
)
SCALING_TRITON_QUEUE = Gauge(
    "pipeline_scaling_triton_queue_seconds",
    "Triton's queue time per request over the last interval (the model that waited most): what Triton's own "
    "autoscaler can follow",
)
SCALING_CPU_BUSY = Gauge("pipeline_scaling_cpu_busy_ratio", "Share of the CPUs the supervisor's workers may use, busy")
SCALING_MAX_WORKERS = Gauge("pipeline_scaling_max_workers", "The most workers the policy may ask for")
SCALING_GROUP_READER_LOST = Counter(
    "pipeline_scaling_group_reader_lost_total",
    "Child processes describing the workers' group that died or hung (librdkafka ended them), each replaced",
)
WORKER_STOP_SECONDS = Histogram(
    "pipeline_scaling_worker_stop_seconds",
    "From SIGTERM to a worker's exit (its batch finished, committed, the group left)",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)


def zero_worker_series() -> None:
    """The worker's counters over a closed set of labels, exported at 0 from its start: a rule's
    rate() and a dashboard panel see the first dead letter of a code, or the first retry, as an
    increase rather than as a series that was not there."""
    for code in ERROR_CODES:
        DEAD_LETTERS.labels(code)
    for stage in ("inference", "features"):  # the stages whose failures are retried (`errors`)
        RETRIES.labels(stage)


def kafka_error_callback(client: str) -> Callable[[KafkaError], None]:
    """An `error_cb` for a librdkafka client: counts what it reports and logs it."""
    log = structlog.get_logger(__name__)

    def count(error: KafkaError) -> None:
        KAFKA_ERRORS.labels(client, error.name()).inc()
        log.warning("kafka_error", client=client, code=error.name(), error=error.str())

    return count


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """`histogram.observe(v)` for each value, counted per bucket in one pass: per-event latencies
    are observed for whole batches, not with one `observe` per event (docs/performance.md#per-batch-metrics).
    Uses the histogram's own bucket and sum values (prometheus_client's layout since 0.4)."""
    if not len(values):
        return
    array = np.asarray(values, dtype=np.float64)
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(array.sum()))
    for bucket, count in zip(histogram._buckets, counts, strict=False):
        if count:
            bucket.inc(int(count))
