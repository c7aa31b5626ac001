"""Whether this process's principal holds the grants its component needs (`acls.grants`), asked of the
cluster at start: a missing ACL is named in one line then, not met later as a consumer that never
gets its partitions or a transaction that fails.

The brokers say which operations the principal may perform on each topic and group (KIP-430's
authorized operations, in Metadata and DescribeGroups); without an authorizer they allow all. A
transactional id cannot be asked about: its grant shows at the first transaction.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import Grant, grants
from pipeline.settings import Settings

_SHOWN = 3  # missing grants named in the line; the rest counted
_COORDINATOR_MOVING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


def check(settings: Settings, component: str, timeout_s: float = 15.0, admin: AdminClient | None = None) -> None:
    """Raises `ConfigurationError` naming the grants of `component` that the settings' principal lacks
    (asked through `admin`, default a client of its own)."""
    needed = [g for g in grants(settings, component) if g.resource in ("topic", "group")]
    admin = admin or clients.admin(settings, clients.QUIET)
    allowed: dict[tuple[str, str], set[str] | None] = {}
    topics = sorted({g.name for g in needed if g.resource == "topic"})
    for name, future in admin.describe_topics(
        TopicCollection(topics), include_authorized_operations=True, request_timeout=timeout_s
    ).items():
        try:
            found = future.result().authorized_operations
        except KafkaException as e:
            error = e.args[0]
            if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                allowed["topic", name] = set()
                continue
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # not there (yet): `pipeline topics apply` and the components' own checks say so
            raise
        allowed["topic", name] = None if found is None else {op.name.lower() for op in found}
    groups = sorted({g.name for g in needed if g.resource == "group"})
    deadline = time.monotonic() + timeout_s
    while groups:
        retry = []
        for name, future in admin.describe_consumer_groups(
            groups, include_authorized_operations=True, request_timeout=timeout_s
        ).items():
            try:
                found = future.result().authorized_operations
            except KafkaException as e:
                error = e.args[0]
                if error.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:
                    if error.retriable() or error.code() in _COORDINATOR_MOVING:
                        retry.append(name)  # a coordinator still loading, or moving: ask again
                    continue  # else unknown: the group's own calls will say
                found = []
            allowed["group", name] = None if found is None else {op.name.lower() for op in found}
        if not retry or time.monotonic() >= deadline:
            break
        groups = retry
        time.sleep(0.2)
    missing = lacking(needed, allowed)
    if missing:
        raise ConfigurationError(refusal(settings, component, missing))


def lacking(needed: list[Grant], allowed: dict[tuple[str, str], set[str] | None]) -> list[Grant]:
    """Pure: the grants of `needed` that `allowed` (resource and name → operations; None or absent: not
    known) does not hold."""
    missing = []
    for grant in needed:
        ops = allowed.get((grant.resource, grant.name))
        if ops is not None and grant.operation not in ops and "all" not in ops:
            missing.append(grant)
    return missing


def refusal(settings: Settings, component: str, missing: list[Grant]) -> str:
    """Pure: the one line that names what the principal lacks."""
    kafka = settings.kafka
    who = f"user {kafka.username!r}" if kafka.username else "this client"
    named = ", ".join(f"{g.operation.upper()} on {g.resource.replace('_', '-')} {g.name}" for g in missing[:_SHOWN])
    more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    return (
        f"kafka at {kafka.bootstrap_servers}: {who} is not allowed {named}{more}, which the {component} needs: "
        "`pipeline topics acls` lists every component's ACLs (docs/security.md#acls)"
    )
