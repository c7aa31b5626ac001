"""A three-node Kafka cluster as local processes (deploy/kafka/cluster.sh), for failover tests: its
nodes started, stopped, killed and started again one at a time, and which node leads what."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

from confluent_kafka import KafkaException

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.local.stack import PROJECT_ROOT
from pipeline.settings import Settings

CLUSTER_SCRIPT = PROJECT_ROOT / "deploy" / "kafka" / "cluster.sh"
NODES = (1, 2, 3)
# transaction.state.log.num.partitions in deploy/kafka/server.properties.in.
TRANSACTION_STATE_PARTITIONS = 12


class LocalCluster:
    def __init__(self, run_dir: Path, base_port: int) -> None:
        """Node N serves clients on `base_port` + 2(N-1) (its controller on the next port)."""
        self.run_dir, self.base_port = run_dir, base_port

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{self.port(n)}" for n in NODES)

    def port(self, node: int) -> int:
        return self.base_port + 2 * (node - 1)

    def settings(self, base: Settings) -> Settings:
        """`base` connected to this cluster, which keeps every topic on 3 replicas."""
        return base.updated(kafka={"bootstrap_servers": self.bootstrap_servers, "min_replication_factor": 3})

    def start(self, timeout_s: float = 60) -> None:
        """The three nodes started, once a client sees all three brokers."""
        self._script("start")
        admin = clients.admin(self.settings(Settings()), clients.QUIET)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if len(admin.list_topics(timeout=5).brokers) == len(NODES):
                    return
            except KafkaException:
                pass  # not answering yet
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the cluster's brokers not all registered after {timeout_s:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        self._script("stop")

    def start_node(self, node: int) -> None:
        """Node `node` started again on its storage, once it serves clients."""
        self._script("start-node", str(node))

    def stop_node(self, node: int) -> None:
        """A clean stop (SIGTERM: the node hands its leaderships over first)."""
        self._script("stop-node", str(node))

    def kill(self, node: int, timeout_s: float = 30) -> None:
        """SIGKILL: no handover, its open connections cut, as a machine lost."""
        pid_file = self.run_dir / f"node-{node}" / "kafka.pid"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _alive(pid):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"kafka node {node} (pid {pid}) still running after SIGKILL")
            time.sleep(0.05)
        pid_file.unlink()

    def wait_in_sync(self, settings: Settings, timeout_s: float = 120) -> None:
        """Until every replica of every partition (the internal topics' included) is in sync again: what
        an operator waits for before restarting the next node."""
        admin = clients.admin(settings, clients.QUIET)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                behind = [
                    f"{name}[{p}]"
                    for name, topic in admin.list_topics(timeout=5).topics.items()
                    for p, partition in topic.partitions.items()
                    if len(partition.isrs) < len(partition.replicas)
                ]
            except KafkaException as e:
                behind = [str(e)]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ConfigurationError(f"replicas not in sync after {timeout_s:g} s: {', '.join(behind[:5])}")
            time.sleep(0.5)

    def _script(self, *args: str) -> None:
        env = {**os.environ, "KAFKA_CLUSTER_PORT": str(self.base_port), "KAFKA_CLUSTER_DIR": str(self.run_dir)}
        done = subprocess.run(["bash", str(CLUSTER_SCRIPT), *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigurationError(f"cluster.sh {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")


def leader(settings: Settings, topic: str, partition: int, timeout_s: float = 30) -> int:
    """The node leading `topic`'s `partition` now (waiting out an election)."""
    admin = clients.admin(settings, clients.QUIET)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = admin.list_topics(topic=topic, timeout=5).topics[topic].partitions[partition].leader
        except (KafkaException, KeyError):
            found = -1
        if found >= 0:
            return int(found)
        if time.monotonic() > deadline:
            raise ConfigurationError(f"{topic}[{partition}] has no leader after {timeout_s:g} s")
        time.sleep(0.2)


def transaction_coordinator(settings: Settings, transactional_id: str) -> int:
    """The node coordinating `transactional_id`'s transactions: the leader of its partition of the
    transaction state log (Kafka's `Utils.abs(id.hashCode()) % partitions`)."""
    return leader(
        settings, "__transaction_state", _java_abs(_java_hash(transactional_id)) % TRANSACTION_STATE_PARTITIONS
    )


def _java_hash(text: str) -> int:
    """Java's String.hashCode (over UTF-16 code units), as a signed 32-bit int."""
    units = text.encode("utf-16-be")
    h = 0
    for unit in struct.unpack(f">{len(units) // 2}H", units):
        h = (31 * h + unit) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _java_abs(n: int) -> int:
    return 0 if n == -(1 << 31) else abs(n)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
