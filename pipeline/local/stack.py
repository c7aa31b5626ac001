"""The local stack for demos, `make up` and the tests: real Kafka and Triton (through the scripts in
deploy/), then topics, features, the model, and worker and gateway processes.

Everything started here is recorded in a run folder (pid files, logs) so `down` can stop it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import structlog
import yaml
from pydantic import SecretStr

from pipeline.errors import ConfigurationError
from pipeline.settings import PROJECT_ROOT, FeastSettings, KafkaSettings, Settings, WorkerSettings

log = structlog.get_logger(__name__)

KAFKA_SCRIPT = PROJECT_ROOT / "deploy" / "kafka" / "kafka.sh"
TRITON_SCRIPT = PROJECT_ROOT / "deploy" / "triton" / "triton.sh"
REDIS_SCRIPT = PROJECT_ROOT / "deploy" / "redis" / "redis.sh"
PROMETHEUS_SCRIPT = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.sh"
CONSUMERS = ("fraud", "drift", "anomaly", "guard")  # `pipeline consumers NAME` run by `stack up` and the demo
# Each one's metrics port, from PIPELINE_CONSUMERS__METRICS_PORT (9101): 9101-9103, and 9106 for the
# guard (9104 and 9105 are the backfill worker's and the scaling policy service's).
METRICS_OFFSETS = {"fraud": 0, "drift": 1, "anomaly": 2, "guard": 5}


@dataclass(frozen=True)
class Ports:
    kafka: int = 9092
    triton_http: int = 8000
    triton_grpc: int = 8001
    gateway: int = 8080
    worker_metrics: int = 9100

    @classmethod
    def from_settings(cls, settings: Settings) -> Ports:
        return cls(
            kafka=_port(settings.kafka.bootstrap_servers.split(",")[0]),
            triton_http=_port(settings.triton.http_url),
            triton_grpc=_port(settings.triton.grpc_url),
            gateway=settings.gateway.port,
            worker_metrics=settings.worker.metrics_port,
        )


class LocalStack:
    def __init__(
        self,
        run_dir: Path,
        ports: Ports,
        own_ports: bool = False,
        model_repository: Path | None = None,
        secured: bool = False,
    ) -> None:
        """`own_ports`: every service runs on its ports as started here (the tests): a port another
        process holds is an error naming it, and a stop that leaves a port answering is one too.
        `model_repository`: Triton's (default: the settings'). `secured`: the broker's client listener
        is SASL_SSL with ACLs, its secrets in <run_dir>/kafka-secrets, and this stack's settings
        connect as its `admin` (deploy/kafka/kafka.sh)."""
        self.run_dir = run_dir
        self.ports = ports
        self.model_repository = model_repository
        self.own_ports = own_ports
        self.secrets = run_dir / "kafka-secrets" if secured else None
        self._service_pids: dict[Path, int] = {}  # services started by this stack, by pid file
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # spawned by this process, by run name
        run_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStack:
        ports = Ports.from_settings(settings)
        # One folder per broker port: a stack on other ports (a test session's) never takes the dev
        # stack's processes for its own.
        default_kafka = _port(KafkaSettings().bootstrap_servers)  # the default, not the environment's
        name = "stack" if ports.kafka == default_kafka else f"stack-{ports.kafka}"
        return cls(PROJECT_ROOT / ".run" / name, ports, model_repository=settings.triton.model_repository)

    # -- settings of the processes of this stack ------------------------------------------------
    def settings(self, base: Settings | None = None) -> Settings:
        """`base` (default: from the environment) with this stack's addresses."""
        base = base or Settings()
        p = self.ports
        triton: dict[str, object] = {
            "grpc_url": f"127.0.0.1:{p.triton_grpc}",
            "http_url": f"127.0.0.1:{p.triton_http}",
            "metrics_url": f"http://127.0.0.1:{p.triton_http + 2}/metrics",
        }
        if self.model_repository is not None:
            triton["model_repository"] = self.model_repository
        kafka: dict[str, object] = {"bootstrap_servers": f"127.0.0.1:{p.kafka}"}
        if self.secrets is not None:
            kafka |= {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "username": "admin",
                "password_file": self.secrets / "admin.password",
                "ssl_ca_file": self.secrets / "tls" / "ca.pem",
            }
        return base.updated(
            kafka=kafka,
            triton=triton,
            gateway={"port": p.gateway},
            worker={"metrics_port": p.worker_metrics},
        )

    # -- real services ---------------------------------------------------------------------------
    def start_kafka(self) -> bool:
        return self._service(KAFKA_SCRIPT, "start", self._kafka_env(), self.run_dir / "kafka" / "kafka.pid")

    def stop_kafka(self) -> None:
        p = self.ports
        self._service(
            KAFKA_SCRIPT, "stop", self._kafka_env(), self.run_dir / "kafka" / "kafka.pid", p.kafka, p.kafka + 1
        )

    def start_triton(self) -> bool:
        """Triton started (when not running) and, once started, serving each model's routed versions
        (`serve_models`: Kafka must be up)."""
        started = self._service(TRITON_SCRIPT, "start", self._triton_env(), self.run_dir / "triton" / "triton.pid")
        if started:
            self.serve_models(self.settings())
        return started

    def stop_triton(self) -> None:
        p = self.ports
        pid_file = self.run_dir / "triton" / "triton.pid"
        self._service(
            TRITON_SCRIPT, "stop", self._triton_env(), pid_file, p.triton_http, p.triton_grpc, p.triton_http + 2
        )

    def start_redis(self, port: int) -> bool:
        return self._service(REDIS_SCRIPT, "start", self._redis_env(port), self.run_dir / f"redis-{port}" / "redis.pid")

    def stop_redis(self, port: int) -> None:
        self._service(REDIS_SCRIPT, "stop", self._redis_env(port), self.run_dir / f"redis-{port}" / "redis.pid", port)

    def start_prometheus(self, port: int, config: dict[str, Any], rule_files: Sequence[Path] = ()) -> str:
        """Debian's Prometheus on `port` with this configuration, `rule_files` copied beside it (name
        them by file name in `config`); its URL once it says it is ready."""
        folder = self.run_dir / f"prometheus-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        for path in rule_files:
            shutil.copy(path, folder / path.name)
        self._service(PROMETHEUS_SCRIPT, "start", self._prometheus_env(port), folder / "prometheus.pid")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return url
            except (URLError, OSError):
                pass
            time.sleep(0.2)
        raise ConfigurationError(f"prometheus on {url} not ready after 60 s; see {folder / 'prometheus.log'}")

    def stop_prometheus(self, port: int) -> None:
        folder = self.run_dir / f"prometheus-{port}"
        self._service(PROMETHEUS_SCRIPT, "stop", self._prometheus_env(port), folder / "prometheus.pid", port)

    def _prometheus_env(self, port: int) -> dict[str, str]:
        return {"PROMETHEUS_PORT": str(port), "PROMETHEUS_DIR": str(self.run_dir / f"prometheus-{port}")}

    def _redis_env(self, port: int) -> dict[str, str]:
        return {"REDIS_PORT": str(port), "REDIS_DIR": str(self.run_dir / f"redis-{port}")}

    def _kafka_env(self) -> dict[str, str]:
        return {
            "KAFKA_PORT": str(self.ports.kafka),
            "KAFKA_CONTROLLER_PORT": str(self.ports.kafka + 1),
            "KAFKA_DATA_DIR": str(self.run_dir / "kafka"),
        } | ({"KAFKA_SECURED": str(self.secrets)} if self.secrets is not None else {})

    def _triton_env(self) -> dict[str, str]:
        return {
            "TRITON_HTTP_PORT": str(self.ports.triton_http),
            "TRITON_GRPC_PORT": str(self.ports.triton_grpc),
            "TRITON_METRICS_PORT": str(self.ports.triton_http + 2),
            "TRITON_RUN_DIR": str(self.run_dir / "triton"),
            "TRITON_MODEL_REPOSITORY": str(self.settings().triton.model_repository),
            "PYTHON": sys.executable,
        }

    def _service(self, script: Path, verb: str, env: dict[str, str], pid_file: Path, *ports: int) -> bool:
        """Run a deploy script; returns True when it started something new. With `own_ports`, a stop
        also ends the process this stack started even when its pid file is gone, and returns only once
        `ports` no longer answer."""
        name = script.parent.name
        if self.own_ports:
            env = {**env, "OWN_PORTS": "1"}
        result = subprocess.run(["bash", str(script), verb], env={**os.environ, **env}, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigurationError(f"{name} {verb} failed:\n{result.stderr.strip()}")
        if verb == "start" and pid_file.exists():
            self._service_pids[pid_file] = int(pid_file.read_text())
        if self.own_ports and verb == "stop":
            if (pid := self._service_pids.pop(pid_file, None)) is not None:
                _end(pid)
            _wait_closed(name, ports)
        return "already running" not in result.stderr

    # -- pipeline processes ----------------------------------------------------------------------
    def spawn(self, name: str, settings: Settings, *args: str) -> subprocess.Popen[bytes]:
        """Start `python -m pipeline ARGS` with `settings`, logging to <run_dir>/<name>.log. Unless
        `settings` name a state directory, the process gets <run_dir>/state/<name>: one per process."""
        if settings.worker.state_dir == WorkerSettings().state_dir:
            settings = settings.updated(worker={"state_dir": self.run_dir / "state" / name})
        with open(self.run_dir / f"{name}.log", "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", *args],
                env={**os.environ, **settings_env(settings)},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                start_new_session=True,
            )
        (self.run_dir / f"{name}.pid").write_text(str(process.pid))
        self._children[name] = process
        return process

    def wait_for_log(self, name: str, text: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
        path = self.run_dir / f"{name}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in path.read_text(errors="replace"):
                return
            if process.poll() is not None:
                raise ConfigurationError(f"{name} exited ({process.returncode}); see {path}")
            time.sleep(0.2)
        raise ConfigurationError(f"{name} not ready after {timeout_s:g} s; see {path}")

    def start_worker(self, settings: Settings, name: str = "worker", backfill: bool = False) -> subprocess.Popen[bytes]:
        """`pipeline worker` (`--backfill`: of replayed requests), once its partitions' state is in."""
        process = self.spawn(name, settings, "worker", *(["--backfill"] if backfill else []))
        self.wait_for_log(name, "worker_ready", process)
        return process

    def start_consumer(
        self, settings: Settings, consumer: str, name: str, *options: str, timeout_s: float = 90
    ) -> subprocess.Popen[bytes]:
        """`pipeline consumers CONSUMER OPTIONS`, once its partitions' tables are recovered."""
        process = self.spawn(name, settings, "consumers", consumer, *options)
        self.wait_for_log(name, "consumer_ready", process, timeout_s)
        return process

    def start_consumers(self, settings: Settings, timeout_s: float = 90) -> list[str]:
        """Each of CONSUMERS not running yet, started side by side (from the beginning of the topics
        when its group has no offsets) and waited for; the names of those started."""
        started = {}
        for consumer in CONSUMERS:
            own = settings.updated(
                consumers={"metrics_port": settings.consumers.metrics_port + METRICS_OFFSETS[consumer]}
            )
            if not self.is_running(name := f"{consumer}-consumer"):
                started[name] = self.spawn(name, own, "consumers", consumer, "--from-beginning")
        try:
            for name, process in started.items():
                self.wait_for_log(name, "consumer_ready", process, timeout_s)
        except BaseException:
            for name in started:
                self.stop_process(name)
            raise
        return list(started)

    def start_gateway(
        self, settings: Settings, name: str = "gateway", timeout_s: float = 60
    ) -> subprocess.Popen[bytes]:
        process = self.spawn(name, settings, "gateway")
        self.wait_for_http(name, process, settings.gateway.port, timeout_s)
        return process

    def wait_for_http(self, name: str, process: subprocess.Popen[bytes], port: int, timeout_s: float = 60) -> None:
        """Until the process answers 200 on /readyz."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ConfigurationError(f"{name} exited ({process.returncode}); see {self.run_dir}/{name}.log")
            try:
                with urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (URLError, OSError):
                pass
            time.sleep(0.2)
        raise ConfigurationError(f"{name} not ready after {timeout_s:g} s")

    def stop_process(self, name: str, timeout_s: float = 30) -> None:
        pid_file = self.run_dir / f"{name}.pid"
        if (child := self._children.pop(name, None)) is not None:
            # Our own child must be reaped: until then it lingers as a zombie that `kill -0` still finds.
            child.terminate()
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            pid_file.unlink(missing_ok=True)
            return
        if not pid_file.exists():
            return
        _end(int(pid_file.read_text()), timeout_s)
        pid_file.unlink(missing_ok=True)

    # -- whole stack -----------------------------------------------------------------------------
    def prepare(self, settings: Settings) -> None:
        """Model exported and features loaded (each only when absent), by one process at a time: two
        stacks side by side (test sessions) share the checkout's models and features."""
        repository, feast = settings.triton.model_repository, settings.feast
        lock_file = PROJECT_ROOT / ".run" / "prepare.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with lock_file.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self._prepare(repository, feast)

    @staticmethod
    def _prepare(repository: Path, feast: FeastSettings) -> None:
        from pipeline.features import demo_data
        from pipeline.models import train

        for name in train.MODELS:
            if not train.is_trained(repository, name):
                import torch

                torch.set_num_threads(2)
                report = train.train_model(name, repository, accounts=feast.accounts, devices=feast.devices)
                log.info("model_trained", model=name, summary=train.describe(name, report))
        if demo_data.apply(feast.repo_path, feast.accounts, feast.devices):
            log.info("features_materialised", accounts=feast.accounts, devices=feast.devices)

    def serve_models(self, settings: Settings) -> None:
        """Triton (in explicit model control) serves each model's routed versions; a model without
        a routing yet gets its highest version on disk as its first stable one."""
        from pipeline import topics
        from pipeline.models.rollout import Rollout
        from pipeline.models.routing_log import describe_routing

        routing_topic = [spec for spec in topics.load_specs(settings) if spec.name == settings.topics.model_routing]
        topics.apply(settings, routing_topic)
        rollout = Rollout(settings)
        try:
            for model, routing in rollout.serve().items():
                log.info("model_served", model=model, routing=describe_routing(routing))
        finally:
            rollout.close()

    @contextmanager
    def services(self, settings: Settings) -> Iterator[None]:
        """Kafka and Triton running (started when not already) and the topics applied; stops on exit
        what it started."""
        from pipeline import topics

        started_kafka = self.start_kafka()
        started_triton = False
        try:
            started_triton = self.start_triton()
            topics.apply(settings)
            yield
        finally:
            if started_triton:
                self.stop_triton()
            if started_kafka:
                self.stop_kafka()

    def up(self) -> None:
        from pipeline import topics

        settings = self.settings()
        self.prepare(settings)
        self.start_kafka()
        self.start_triton()
        topics.apply(settings)
        if not self.is_running("worker"):
            self.start_worker(settings)
        if not self.is_running("backfill-worker"):
            self.start_worker(settings, "backfill-worker", backfill=True)
        if not self.is_running("gateway"):
            self.start_gateway(settings)
        self.start_consumers(settings)
        log.info(
            "stack_up",
            kafka=f"127.0.0.1:{self.ports.kafka}",
            triton_grpc=f"127.0.0.1:{self.ports.triton_grpc}",
            gateway=f"http://127.0.0.1:{self.ports.gateway}",
            logs=str(self.run_dir),
        )

    def down(self) -> None:
        for name in (*(f"{c}-consumer" for c in CONSUMERS), "gateway", "backfill-worker", "worker"):
            self.stop_process(name)
        self.stop_triton()
        self.stop_kafka()

    def is_running(self, name: str) -> bool:
        pid_file = self.run_dir / f"{name}.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text()), 0)
        except ProcessLookupError:
            return False
        return True


def port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _end(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; nothing if it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_closed(name: str, ports: tuple[int, ...], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while open_ports := [port for port in ports if port_answers(port)]:
        if time.monotonic() > deadline:
            raise ConfigurationError(f"{name} stopped, but 127.0.0.1:{open_ports[0]} still answers")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a listener could bind `port` on 127.0.0.1 now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def settings_env(settings: Settings) -> dict[str, str]:
    """`PIPELINE_*` variables that make a child process read back exactly `settings`: a secret as
    itself (JSON shows it masked), a field left unset (None) not at all (its default is None)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict):
            block = getattr(settings, name)
            for field, inner in value.items():
                if isinstance(secret := getattr(block, field), SecretStr):
                    inner = secret.get_secret_value()
                if inner is not None:
                    env[f"PIPELINE_{name.upper()}__{field.upper()}"] = _env_value(inner)
        else:
            env[f"PIPELINE_{name.upper()}"] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])
