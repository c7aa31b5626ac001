"""One frozen settings object per process, read from `PIPELINE_*` environment variables.

Nested blocks use `__`: `PIPELINE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092`,
`PIPELINE_WORKER__BATCH_SIZE=512`. Nothing else in the package reads `os.environ`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Block):
    """How every Kafka client of the pipeline connects (pipeline/kafka/, docs/security.md)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "pipeline"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str = ""
    # The password, or a file holding it (a mounted secret; read at start, its last newline dropped).
    password: SecretStr | None = None
    password_file: Path | None = None
    # TLS: the CA that signed the brokers' certificates (empty: the system's), and for mutual TLS the
    # client's certificate and key (PEM) and the key's password.
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    # Extra librdkafka options, merged over the safe defaults of every librdkafka client.
    extra: dict[str, Any] = Field(default_factory=dict)
    # The fewest replicas a topic the process writes may have. 2 or more (production: 3) also requires
    # min.insync.replicas of 2 or more; a process finding less refuses to start (pipeline/kafka/durability.py).
    min_replication_factor: int = Field(default=1, ge=1)

    def secret(self) -> str | None:
        """The SASL password: from its file when one is named, else the setting."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text().removesuffix("\n")
            except OSError as e:
                raise ConfigurationError(f"kafka.password_file {self.password_file}: {e.strerror}") from None
        return self.password.get_secret_value() if self.password is not None else None


class TopicSettings(_Block):
    requests: str = "inference.requests"
    results: str = "inference.results"
    dlq: str = "inference.dlq"
    replies: str = "inference.replies"
    alerts: str = "fraud.alerts"
    drift_alerts: str = "drift.alerts"
    anomaly_alerts: str = "anomaly.alerts"
    # Replays (`pipeline replay`): their requests, read by the backfill workers only; their results,
    # never mixed into `results`; each replay's checkpoint.
    backfill_requests: str = "inference.requests.backfill"
    backfill_results: str = "inference.results.backfill"
    backfill_dlq: str = "inference.dlq.backfill"  # their dead letters, apart from the live ones
    replay_checkpoints: str = "replay.checkpoints"
    # Every model's routing (stable version, candidate, shares), one change per record, read by every
    # worker (`pipeline models publish|share|promote|rollback` write it).
    model_routing: str = "models.routing"
    # The candidate's results on the events it shadows, apart from the live results.
    shadow_results: str = "inference.results.shadow"
    # One worker's rate as `pipeline scale` learnt it, one record per workers' group (compacted).
    scaling_rates: str = "scaling.rates"
    definitions: Path = PROJECT_ROOT / "topics" / "topics.yaml"


class WorkerSettings(_Block):
    app_id: str = "pipeline-worker"
    # Up to this many requests per batch: whatever has arrived, so only a backlog fills it. Each batch
    # costs a fixed share (one Triton call, one feature read, a fetch), so a backlog drains faster in
    # larger ones, up to Triton's max_batch_size (docs/performance.md#batch-size).
    batch_size: int = Field(default=1024, ge=1, le=4096)
    batch_timeout_ms: int = Field(default=20, ge=1)
    metrics_port: int = 9100
    metrics_host: str = "127.0.0.1"
    # Repeats of an event_id within this window get no second result; older entries expire.
    dedup_window_s: float = 24 * 3600.0
    # The committed dedup entries on local disk (RocksDB), under <state_dir>/<app_id>; one worker per
    # directory. Kept across restarts: a worker restarted on it reads only the changelog's tail.
    state_dir: Path = PROJECT_ROOT / ".run" / "state"
    # RocksDB's block cache (index and filter blocks included): the state's memory, whatever its size.
    state_cache_mib: int = Field(default=64, ge=8)
    session_timeout_ms: int = 10_000
    # Transient failures (Triton, feature store) are retried with capped exponential backoff
    # for up to retry_budget_s; then the requests go to the DLQ as inference_failed.
    retry_initial_ms: int = 100
    retry_max_ms: int = 5_000
    retry_budget_s: float = 60.0
    # Transactional producers per worker, each committing a share of its input partitions side by
    # side: more lanes, less waiting for another partition's transaction, but more, smaller
    # transactions (broker and client CPU): 1 where CPU is short (docs/performance.md#transaction-lanes).
    transaction_lanes: int = Field(default=1, ge=1, le=64)
    # Batches scored while a transaction commits share the next one, up to this many.
    max_batches_per_transaction: int = Field(default=16, ge=1)
    # Under a backlog (the last fetch came back full), and while HTTP callers are being answered
    # when scored (reply_when="scored"), a transaction waits until it holds max_batches_per_transaction
    # batches or its oldest batch is this old: each transaction costs the broker a fixed number of
    # requests and log writes whatever its size (like Kafka Streams' commit.interval.ms under
    # exactly-once; docs/performance.md#transaction-linger).
    # Otherwise it starts at once.
    transaction_linger_ms: int = Field(default=50, ge=0)
    # Names this process's transactional producer (`<app_id>-<instance_id>`); empty: a random one per
    # start. A stable id (a StatefulSet pod name) lets a restarted worker abort its predecessor's open
    # transaction at once instead of after transaction_timeout_ms.
    instance_id: str = ""
    # A transaction spans only the publishing of one scored batch; the broker aborts one left open by a
    # crashed worker after this long (read_committed readers of its partitions wait until then).
    transaction_timeout_ms: int = Field(default=10_000, ge=1_000)
    # The next transaction's first requests meet CONCURRENT_TRANSACTIONS until the broker has written
    # the previous one's markers (KAFKA-5477), a few ms: retry that soon, not after librdkafka's 100 ms.
    transaction_retry_backoff_ms: int = Field(default=1, ge=1)
    # When an HTTP caller gets its answer: "scored", as soon as its request is scored (its result is
    # committed in the transaction that follows; see `worker.answers`), or "committed", with that transaction.
    reply_when: Literal["scored", "committed"] = "scored"
    # Answer a bridge over TCP at the address in a request's `answer-to` header (see `answer_wire`):
    # when scored, or right after the commit with reply_when="committed"; while it cannot be
    # reached, answers take the replies topic (inside the transaction, with "committed").
    direct_answers: bool = True
    # After a failed connection to an answer address, its answers take the replies topic this long.
    answer_retry_s: float = Field(default=5.0, ge=0)
    # Answers queued to a bridge that reads none: beyond this the connection is dropped (then retried).
    answer_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=65_536)


class ReplaySettings(_Block):
    """Replays and the backfill workers that score them (`pipeline worker --backfill`)."""

    # `pipeline replay` commits a transaction (requests and checkpoint) every this many source rows
    # (with --rate: every half second of it): each commit stalls publishing while the broker
    # writes its markers (docs/performance.md#replay-publishing).
    transaction_rows: int = Field(default=50_000, ge=1)

    # The backfill workers' group (and state directory), and their metrics port.
    backfill_app_id: str = "pipeline-worker-backfill"
    backfill_metrics_port: int = 9104
    # Live traffic first: backfill workers pause while the live workers' lag is above this many
    # requests, and resume below half of it; checked this often.
    live_max_lag: int = Field(default=1_000, ge=0)
    live_check_s: float = Field(default=1.0, gt=0)
    # A live lag unreadable this long no longer holds backfill workers paused: they go on, behind the
    # live workers by CPU niceness alone, until it is read again (docs/architecture.md#replays).
    live_unreadable_s: float = Field(default=60.0, gt=0)
    # Backfill workers run at this CPU niceness (0-19), behind the live workers on a shared machine
    # (docs/performance.md#replay-figures: Triton's priority levels were tried and not kept).
    backfill_nice: int = Field(default=10, ge=0, le=19)
    # A backfill worker dead-letters a request whose `results-topic` does not exist; a topic found
    # missing is looked up again after this long (pipeline/worker/topic_catalog.py).
    topic_recheck_s: float = Field(default=5.0, gt=0)


class ScalingSettings(_Block):
    """`pipeline scale`: the lag-based policy, the supervisor's worker processes, the policy service."""

    # The policy (`scaling/policy.py`): drain any backlog within drain_s at the measured rate of one
    # worker, between min_workers and max_workers (never more than the requests' partitions). Unset,
    # max_workers is the CPUs `pipeline scale` may use where it runs the workers (affinity and cgroup
    # quota: `scaling/cpus.py`), and the partitions with --serve.
    min_workers: int = Field(default=1, ge=1)
    max_workers: int | None = Field(default=None, ge=1)
    drain_s: float = Field(default=30.0, gt=0)
    up_cooldown_s: float = Field(default=30.0, ge=0)
    down_window_s: float = Field(default=300.0, ge=0)
    restore_s: float = Field(default=5.0, ge=0)  # a moved partition's state restore, weighed before a step down
    # From a worker's start to its joining the group, until the supervisor has measured one: a backlog
    # the running workers drain sooner than a new one could start gets none.
    start_s: float = Field(default=15.0, ge=0)
    # One worker's rate (requests/s) until one has been measured while the group had a backlog (or read
    # back from the scaling_rates topic); a backlog waits measure_s for a measure, then takes at most
    # one step on this prior.
    worker_rate_per_s: float = Field(default=5_000.0, gt=0)
    measure_s: float = Field(default=5.0, ge=0)
    # A step up whose workers add less than min_gain of their expected rate is taken back, and the count
    # held (saturated) for saturated_hold_s, or until its rate measured again moves by a quarter.
    min_gain: float = Field(default=0.5, ge=0, le=1)
    saturated_hold_s: float = Field(default=600.0, ge=0)
    # No worker is added while the usable CPUs are busier than this share (where the supervisor runs
    # them; 1: never held for CPU), or while Triton's queue time per request (`triton.metrics_url`) is
    # this long.
    cpu_busy_limit: float = Field(default=0.9, gt=0, le=1)
    triton_queue_s: float = Field(default=0.05, gt=0)
    interval_s: float = Field(default=2.0, gt=0)  # lag read and decision this often
    status_every_s: float = Field(default=30.0, gt=0)  # a standing decision logged this often
    # The supervisor's worker processes: after SIGTERM a worker finishes its batch, commits and leaves
    # the group; one still running after stop_timeout_s is killed (its open transaction aborts).
    stop_timeout_s: float = Field(default=30.0, gt=0)
    # A worker that exits on its own is started again: at once after a long run, else after a delay
    # doubling from restart_backoff_s with each exit in a row, up to restart_backoff_max_s (a worker
    # that ran that long before exiting starts the count again).
    restart_backoff_s: float = Field(default=2.0, gt=0)
    restart_backoff_max_s: float = Field(default=60.0, gt=0)
    # Worker i's metrics on worker_metrics_port + i (0: any free port); its log in <run_dir>/<instance>.log,
    # its state in <worker.state_dir>/<instance>.
    worker_metrics_port: int = Field(default=9110, ge=0)
    run_dir: Path = PROJECT_ROOT / ".run" / "scale"
    # The desired count over HTTP (GET /desired, for KEDA's metrics-api scaler), with /metrics.
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=9105, ge=0)


class FraudRuleSettings(_Block):
    """The fraud consumer's rules (`pipeline/consumers/fraud_rules.py`)."""

    model: str = "fraud_scorer"  # the model whose results the rules read
    # high_score: one score at or above this alerts at once.
    hard_threshold: float = Field(default=0.95, ge=0, le=1)
    # repeated_high_scores: at least this many scores at or above `high_score` for one account
    # within one tumbling window of `high_score_window_s` alert once for that window.
    high_score: float = Field(default=0.7, ge=0, le=1)
    high_score_count: int = Field(default=3, ge=1)
    high_score_window_s: float = Field(default=600.0, gt=0)
    # velocity: at least this many results of one account within one tumbling window, any score.
    velocity_count: int = Field(default=10, ge=1)
    velocity_window_s: float = Field(default=60.0, gt=0)


class AnomalySettings(_Block):
    """The anomaly consumer (`pipeline/consumers/anomaly_rules.py`)."""

    model: str = "anomaly_detector"  # the model whose results it reads
    threshold: float = Field(default=0.5, ge=0, le=1)  # a reading scored at or above this is anomalous
    # One alert per device per this long; further anomalous readings of the device within it are
    # counted in that alert's follow-up, republished with the count at the counts 1, 2, 4, 8, ... and
    # on any such reading `follow_up_s` or more after its last publication (`consumers.anomaly_rules`).
    suppress_s: float = Field(default=600.0, gt=0)
    follow_up_s: float = Field(default=60.0, ge=0)


class DriftSettings(_Block):
    """The drift monitor (`pipeline/consumers/drift.py`)."""

    # Each feature's sliding window: at 10 bins, PSI over 100 events averages ~0.09 with no drift at
    # all, so windows hold at least 1,000.
    window_events: int = Field(default=1000, ge=1000)
    every_events: int = Field(default=100, ge=1)  # measured this often once a window is full
    warning: float = Field(default=0.1, gt=0)
    alert: float = Field(default=0.25, gt=0)


class GuardSettings(_Block):
    """The rollout guard (`pipeline consumers guard`, `pipeline/consumers/guard_rules.py`): a canary
    judged against the stable arm over tumbling windows, rolled back past these thresholds."""

    window_s: float = Field(default=30.0, gt=0)
    min_events: int = Field(default=200, ge=1)  # per arm and window, before a window is judged
    failure_excess: float = Field(default=0.02, ge=0)  # canary failure rate minus the stable arm's
    latency_ratio: float = Field(default=2.0, gt=1)  # canary p99 latency over the stable arm's
    # PSI of the canary's scores against the stable arm's: a retrain on fresh rows measures 0.06-0.19
    # against its predecessor (calibration moves at the low end), a broken model (fitted to shuffled
    # labels) 5.5 (docs/model.md#versions-and-rollouts).
    score_psi: float = Field(default=1.0, gt=0)
    windows: int = Field(default=2, ge=1)  # unhealthy windows in a row that roll the canary back


class ConsumerSettings(_Block):
    """The results' consumers (`pipeline consumers ...`, a Faust app)."""

    # The Kafka group, also the prefix of the Faust tables' changelog topics; empty: pipeline-<consumer>.
    group_id: str = ""
    metrics_port: int = 9101
    metrics_host: str = "127.0.0.1"
    # Offsets are committed this often (and at shutdown).
    commit_interval_s: float = Field(default=1.0, gt=0)
    # Table changelog writes (one per result the rules count) and alerts wait this long to be sent in
    # batches: a third more results/s for this much more alert latency
    # (docs/performance.md#consumer-producer-linger).
    producer_linger_ms: int = Field(default=50, ge=0)
    # After SIGTERM, the process exits within this long even when the broker is gone (Faust's own
    # stop has no bound: docs/architecture.md#consumers).
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    # A member that stops heartbeating (a crash) keeps its partitions this long before the group hands
    # them on; the worker's value (Faust's own, 60 s, left a crashed consumer's alerts that late).
    session_timeout_s: float = Field(default=10.0, ge=6.0)
    # Faust's data directory (<data_dir>/<group>-data; the tables are in memory, backed by their
    # changelog topics), not the working directory.
    data_dir: Path = PROJECT_ROOT / ".run" / "consumers"
    fraud: FraudRuleSettings = FraudRuleSettings()
    anomaly: AnomalySettings = AnomalySettings()
    drift: DriftSettings = DriftSettings()
    guard: GuardSettings = GuardSettings()


class TritonSettings(_Block):
    grpc_url: str = "127.0.0.1:8001"
    http_url: str = "127.0.0.1:8000"
    metrics_url: str = "http://127.0.0.1:8002/metrics"  # its queue time, read by `pipeline scale`
    timeout_s: float = 10.0
    model_repository: Path = PROJECT_ROOT / "triton_models"


class ModelSettings(_Block):
    """Model versions and their routing (`pipeline models ...`, docs/model.md#versions-and-rollouts)."""

    # A version no longer routed to stays loaded this long after the change, so that batches routed
    # before it (workers apply a change within a second) finish on it; then Triton unloads it.
    unload_grace_s: float = Field(default=5.0, ge=0)
    # A version Triton has not loaded and made ready within this long fails to publish.
    load_timeout_s: float = Field(default=120.0, gt=0)
    # A worker starts scoring once it has read the routing topic to its end, within this long.
    routing_wait_s: float = Field(default=30.0, gt=0)


class FeastSettings(_Block):
    repo_path: Path = PROJECT_ROOT / "feature_repo"
    accounts: int = 10_000  # synthetic card accounts 1..N (fraud_scorer's entity)
    devices: int = 1_000  # synthetic machines 1..N (anomaly_detector's entity)
    # Feature rows are reused this long per entity where they are not held (0: none reused, held or
    # not; every batch reads the store): a few seconds are invisible to the model.
    cache_ttl_s: float = Field(default=5.0, ge=0)
    # Rows of views fed only by materialisation are held until the registry, looked at every
    # registry_poll_s, records the next one (docs/performance.md#feature-cache); at most
    # cache_max_rows rows of each kind are kept, the oldest dropped first.
    hold_until_materialised: bool = True
    registry_poll_s: float = Field(default=5.0, gt=0)
    cache_max_rows: int = Field(default=200_000, ge=0)


class GatewaySettings(_Block):
    host: str = "127.0.0.1"
    port: int = 8080
    timeout_s: float = 10.0
    # An idle client connection is kept this long. Longer than the idle timeout of the clients and load
    # balancers in front (60 s on AWS ALB): a server that closes first races a request sent on the
    # connection just then, which the client sees as a read error.
    keep_alive_s: float = Field(default=75.0, gt=0)
    # Bridge instances claim one replies partition each through this consumer group (max instances =
    # replies partitions); a crashed instance's partition is free again after reply_session_timeout_ms.
    # Empty: "<replies topic>.gateways".
    reply_group: str = ""
    reply_session_timeout_ms: int = 10_000
    # Workers send the answers straight here, over TCP, instead of through the replies topic; the
    # address goes out in each request's `answer-to` header.
    # Port 0: any free port. answer_advertise: the host:port workers connect to (empty: the bound one;
    # set it where workers reach this instance by another name, e.g. the pod IP). Disabled: replies topic only.
    direct_answers: bool = True
    answer_host: str = "127.0.0.1"
    answer_port: int = Field(default=0, ge=0, le=65535)
    answer_advertise: str = ""
    reply_claim_timeout_s: float = 30.0
    # API keys (JSON list). Empty: the bridge is open, and says so at start-up.
    api_keys: list[str] = Field(default_factory=list, repr=False)
    rate_limit_per_s: float = 0.0  # per API key; 0 = no rate limit
    rate_limit_burst: float = 100.0
    max_in_flight: int = 2_000
    max_body_bytes: int = 1_048_576


class TracingSettings(_Block):
    """OpenTelemetry traces across the bridge, Kafka, the worker and the consumers (`pipeline.tracing`,
    docs/operations.md#traces); the W3C `traceparent` travels in the Kafka headers."""

    enabled: bool = False
    # OTLP over HTTP (protobuf) to a collector, e.g. http://otel-collector:4318/v1/traces. Empty,
    # with no file: the OpenTelemetry default (http://localhost:4318/v1/traces).
    otlp_endpoint: str = ""
    # Spans written here instead, one JSON object a line (OpenTelemetry's console exporter): for
    # tests and a look without a collector.
    file: Path | None = None
    # The share of new traces kept (a trace a caller started keeps its caller's decision).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # A worker batch links to at most this many of its events' traces.
    max_links: int = Field(default=128, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_", env_nested_delimiter="__", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    triton: TritonSettings = TritonSettings()
    models: ModelSettings = ModelSettings()
    feast: FeastSettings = FeastSettings()
    gateway: GatewaySettings = GatewaySettings()
    consumers: ConsumerSettings = ConsumerSettings()
    replay: ReplaySettings = ReplaySettings()
    scaling: ScalingSettings = ScalingSettings()
    tracing: TracingSettings = TracingSettings()
    default_model: str = "fraud_scorer"
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    def backfill(self) -> Settings:
        """The settings of a backfill worker: the backfill topics, its own group and metrics port."""
        return self.updated(
            topics={
                "requests": self.topics.backfill_requests,
                "results": self.topics.backfill_results,
                "dlq": self.topics.backfill_dlq,
            },
            worker={"app_id": self.replay.backfill_app_id, "metrics_port": self.replay.backfill_metrics_port},
        )

    def updated(self, **blocks: dict[str, Any]) -> Settings:
        """A copy with some fields of nested blocks replaced: `updated(worker={"app_id": "w2"})`."""
        return self.model_copy(
            update={name: getattr(self, name).model_copy(update=fields) for name, fields in blocks.items()}
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
