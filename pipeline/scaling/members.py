"""The workers' group: each member and its partitions of the requests topic, read in a process apart.

Describing a group is an admin request to its coordinator, and librdkafka can end the whole process
when such a request's connection drops (a broker restart): `Assertion 'eonce->refcnt > 0' failed`
(confluentinc/librdkafka#4605, #3663), which no Python handler can catch. There is no consumer-side
way to ask for a group's members, so the request runs in a child process of its own: when librdkafka
ends it, or the reading fails, the reading is "unknown" and the next one starts a new child.
Measured with broker restarts: describing the group in a loop aborted its process
(docs/scaling.md#lag-readers).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import structlog

from pipeline import metrics

log = structlog.get_logger(__name__)

Assignment = dict[str, list[int]]  # each member (by client id) and its partitions of the topic


class GroupMembers:
    def __init__(self, admin_config: dict[str, Any], group: str, topic: str) -> None:
        self._config, self.group, self.topic = admin_config, group, topic
        self._context = multiprocessing.get_context("spawn")  # a fork would copy librdkafka's threads' state
        self._child: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id; None before a reading or after it was lost."""
        return self._child.pid if self._child is not None else None

    def read(self, timeout_s: float = 5.0) -> Assignment | None:
        """The members and their partitions; None when the group could not be read."""
        conn = self._connection()
        try:
            conn.send(timeout_s)
            if not conn.poll(timeout_s + 5):
                raise TimeoutError(f"no answer within {timeout_s + 5:g} s")
            answer = conn.recv()
        except (EOFError, OSError, TimeoutError) as e:
            self._lost(str(e) or type(e).__name__)
            return None
        if isinstance(answer, str):
            # A client that lost its coordinator in a broker restart can time out for good where a
            # new one reads at once: the next reading is a new child's.
            log.warning("group_unreadable", group=self.group, error=answer)
            self._retire()
            return None
        return answer

    def _connection(self) -> Connection:
        if self._conn is None:
            parent, child = self._context.Pipe()
            self._child = self._context.Process(
                target=_serve, args=(child, self._config, self.group, self.topic), name="group-members", daemon=True
            )
            self._child.start()
            child.close()
            self._conn = parent
        return self._conn

    def _lost(self, error: str) -> None:
        """The child died (librdkafka ended it) or hung: the next reading starts another."""
        exitcode = self._retire()
        log.warning("group_reader_lost", group=self.group, error=error, exitcode=exitcode)
        metrics.SCALING_GROUP_READER_LOST.inc()

    def _retire(self) -> int | None:
        """End the child (closing its pipe ends its loop); its exit code."""
        child, self._child = self._child, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if child is None:
            return None
        child.join(timeout=2)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
        return child.exitcode

    def close(self) -> None:
        self._retire()


def assignment_of(members: list[tuple[str, str, list[tuple[str, int]]]], topic: str) -> Assignment:
    """Pure: (client id, member id, assigned topic partitions) of each member → its partitions of
    `topic`, by client id; members sharing a client id (workers without an instance id) are told
    apart by the end of their member id."""
    clients = Counter(client for client, _, _ in members)
    return {
        (client if clients[client] == 1 else f"{client}/{member[-8:]}"): sorted(p for t, p in assigned if t == topic)
        for client, member, assigned in members
    }


def _serve(conn: Connection, config: dict[str, Any], group: str, topic: str) -> None:
    """In the child: one description per request, until the parent closes its end."""
    from confluent_kafka import KafkaException

    from pipeline.kafka.clients import admin_of

    admin = admin_of(config)
    while True:
        try:
            timeout_s = conn.recv()
        except (EOFError, OSError):
            return
        try:
            description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result(timeout_s)
            members = [
                (m.client_id, m.member_id, [(tp.topic, tp.partition) for tp in m.assignment.topic_partitions])
                for m in description.members
            ]
            conn.send(assignment_of(members, topic))
        except (KafkaException, TimeoutError) as e:
            conn.send(str(e) or type(e).__name__)
