"""Session fixtures: one real Kafka broker and one real Triton server for the whole test session,
started by the project's own scripts on test ports, plus the model and Feast data they need. The
session owns those ports: it fails, naming the port, when another process already holds one, and a
service it stops is stopped (its ports closed). `PIPELINE_TEST_PORT_OFFSET` moves every test port,
so that two sessions can run side by side; under pytest-xdist (`make test` runs two) each worker is a
session of its own, with its own services, 200 ports further on.

Integration tests get factories: fresh settings with unique topic names and a unique worker app id
(`pipeline_settings`), and real worker / gateway processes (`start_worker`, `start_gateway`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import topics
from pipeline.local.stack import LocalStack, Ports, free_port
from pipeline.models import routing_log
from pipeline.models.rollout import now
from pipeline.models.routing import Change
from pipeline.settings import Settings

XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
PORT_OFFSET = int(os.environ.get("PIPELINE_TEST_PORT_OFFSET", "0")) + 200 * XDIST_WORKER
TEST_PORTS = Ports(
    kafka=19092 + PORT_OFFSET,  # and its controller on the next port
    triton_http=18000 + PORT_OFFSET,  # and Triton's metrics on 18002
    triton_grpc=18001 + PORT_OFFSET,
    gateway=18080 + PORT_OFFSET,
    worker_metrics=0,
)
REDIS_PORT = 16379 + PORT_OFFSET
SECURED_KAFKA_PORT = 19492 + PORT_OFFSET  # the secured broker's (and its controller on the next port)
CLUSTER_KAFKA_PORT = 19792 + PORT_OFFSET  # the three-node cluster's first node (nodes 2 apart, controllers next)
TEST_TOPIC = re.compile(r"t[0-9a-f]{10}\.")  # make_settings' topic names


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The session's Triton serves a copy of the model repository (trained once, in the checkout),
    where tests add versions and models of their own."""
    shipped = Settings().triton.model_repository
    repository = tmp_path_factory.mktemp("models") / "triton_models"
    local = LocalStack(tmp_path_factory.mktemp("stack"), TEST_PORTS, own_ports=True, model_repository=repository)
    local.prepare(local.settings().updated(triton={"model_repository": shipped}))
    shutil.copytree(shipped, repository, ignore=shutil.ignore_patterns("__pycache__", ".staging-*"))
    local.start_kafka()
    try:
        local.start_triton()
        yield local
    finally:
        local.stop_triton()
        local.stop_kafka()


def make_settings(stack: LocalStack, base: Settings | None = None, **worker: object) -> Settings:
    """Settings for one test: unique topics and worker app id, topics created on the broker (`base`'s:
    default the stack's)."""
    uid = uuid.uuid4().hex[:10]
    base = base or stack.settings()
    settings = base.updated(
        topics={
            name: f"t{uid}.{name}"
            for name in ("requests", "results", "dlq", "replies", "alerts", "anomaly_alerts", "shadow_results")
        },
        worker={"app_id": f"worker-{uid}", **worker},
        gateway={"port": free_port()},
    )
    topics.apply(settings)
    return settings


def with_replay_topics(settings: Settings, **replay: object) -> Settings:
    """`settings` with backfill topics, a checkpoints topic and a backfill group of their own
    (created on the broker), and these replay settings."""
    settings = settings.updated(
        topics={
            "backfill_requests": f"{settings.topics.requests}.backfill",
            "backfill_results": f"{settings.topics.results}.backfill",
            "backfill_dlq": f"{settings.topics.dlq}.backfill",
            "replay_checkpoints": f"{settings.topics.requests}.checkpoints",
        },
        replay={
            "backfill_app_id": f"{settings.worker.app_id}-backfill",
            "backfill_metrics_port": free_port(),
            **replay,
        },
    )
    topics.apply(settings)
    return settings


def route_as_served(stack: LocalStack, settings: Settings) -> None:
    """The contract's topics on `settings`' broker (another than the session's), and its routing of the
    fraud scorer set to the version the session's Triton serves."""
    topics.apply(settings)
    stable = routing_log.read(stack.settings()).routing("fraud_scorer").stable
    served = Change("fraud_scorer", "init", version=stable, by="test", at=now(), why="the session's Triton")
    routing_log.append(settings, served)


class Processes:
    """Worker and gateway processes started for tests; all stopped at the fixture's end."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.started: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def worker(self, settings: Settings) -> subprocess.Popen[bytes]:
        self.names.append(name := f"worker-{uuid.uuid4().hex[:8]}")
        process = self.stack.start_worker(settings, name)
        self.started.append(process)
        return process

    def gateway(self, settings: Settings) -> subprocess.Popen[bytes]:
        self.names.append(name := f"gateway-{uuid.uuid4().hex[:8]}")
        process = self.stack.start_gateway(settings, name)
        self.started.append(process)
        return process

    def log_tails(self, lines: int = 40) -> Iterator[tuple[str, str]]:
        """The last `lines` telling lines each started process logged, for a failed test's report:
        without dead letters and librdkafka's own lines (its errors are logged as kafka_error too)."""
        for name in self.names:
            path = self.stack.run_dir / f"{name}.log"
            if path.exists():
                telling = [
                    line
                    for line in path.read_text(errors="replace").splitlines()
                    if not line.startswith("%") and '"event": "dead_letter"' not in line and '"_TRANSPORT"' not in line
                ]
                yield name, "\n".join(telling[-lines:])

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def running_pipeline(stack: LocalStack, settings: Settings) -> Iterator[Settings]:
    """A worker and a gateway on `settings`, for a module's tests; stopped afterwards."""
    started = Processes(stack)
    try:
        started.worker(settings)
        started.gateway(settings)
        yield settings
    finally:
        started.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with the last lines of each worker and gateway it started (CI
    keeps no run directory)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    started = getattr(item, "funcargs", {}).get("processes")
    if report.when == "call" and report.failed and isinstance(started, Processes):
        for name, tail in started.log_tails():
            report.sections.append((f"{name} log, last lines", tail))


@pytest.fixture(autouse=True)
def _test_topics_deleted(request: pytest.FixtureRequest) -> Iterator[None]:
    """The topics of its own (`make_settings`' names) a test created on the session's broker are
    deleted after it; those of module fixtures, there before it, are kept. A session creates some
    150 sets of them, and a broker holding every one answers metadata ever more slowly."""
    if "stack" not in request.fixturenames:
        yield
        return
    stack: LocalStack = request.getfixturevalue("stack")
    admin = topics.admin_client(stack.settings())
    before = set(admin.list_topics(timeout=30).topics)
    yield
    created = [name for name in admin.list_topics(timeout=30).topics if name not in before and TEST_TOPIC.match(name)]
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.exception()  # waited for; a topic already gone is no matter


@pytest.fixture
def pipeline_settings(stack: LocalStack) -> Callable[..., Settings]:
    return lambda **worker: make_settings(stack, **worker)


@pytest.fixture
def processes(stack: LocalStack) -> Iterator[Processes]:
    started = Processes(stack)
    yield started
    started.stop_all()


@pytest.fixture
def start_worker(processes: Processes) -> Callable[[Settings], subprocess.Popen[bytes]]:
    return processes.worker


@pytest.fixture
def start_gateway(processes: Processes) -> Callable[[Settings], subprocess.Popen[bytes]]:
    return processes.gateway


@pytest.fixture(scope="session")
def redis_feature_repo(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the Feast repo whose online store is a real Redis (the production option), loaded."""
    from pipeline.features import demo_data

    stack.start_redis(REDIS_PORT)
    try:
        source = stack.settings().feast.repo_path
        repo = demo_data.use_redis(source, tmp_path_factory.mktemp("feature_repo_redis"), f"127.0.0.1:{REDIS_PORT}")
        demo_data.apply(repo, stack.settings().feast.accounts)
        yield repo
    finally:
        stack.stop_redis(REDIS_PORT)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample a process exports on 127.0.0.1:`port`/metrics, by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in scrape(port).items() if sample == name and wanted <= have)
