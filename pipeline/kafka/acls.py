"""The operator's ACL recipe, pure: each component's Kafka principal and the least it must be allowed
(docs/security.md#acls). `pipeline topics acls` prints it, `--apply` creates it.

Each component runs as a principal of its own, `User:pipeline-<component>` unless the operator names
another. A grant is one allowed operation on one resource; READ and WRITE on a topic imply DESCRIBE,
READ on a group implies DESCRIBE, as Kafka's authorizer has it. The names come from the settings, so
a renamed topic or group is granted under its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pipeline.settings import Settings

Resource = Literal["topic", "group", "transactional_id", "cluster"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "describe", "describe_configs", "create"]

# Every component that talks to Kafka, and what it is: the names `--principal` and the docs use.
COMPONENTS: dict[str, str] = {
    "worker": "pipeline worker (live requests)",
    "backfill": "pipeline worker --backfill (replayed requests)",
    "bridge": "pipeline gateway (HTTP bridge)",
    "fraud": "pipeline consumers fraud",
    "anomaly": "pipeline consumers anomaly",
    "drift": "pipeline consumers drift",
    "guard": "pipeline consumers guard",
    "replay": "pipeline replay (and replay diff, replay export)",
    "redrive": "pipeline dlq redrive",
    "scale": "pipeline scale --serve (lag only; `pipeline scale` also runs workers: add the worker's grants)",
    "models": "pipeline models publish|share|promote|rollback|history|compare",
}


@dataclass(frozen=True, order=True)
class Grant:
    """One operation allowed on the resources a name (or a prefix of names) gives."""

    resource: Resource
    name: str
    operation: Operation
    pattern: Pattern = "literal"

    def describe(self) -> str:
        kind = self.resource.replace("_", "-")
        name = f"{self.name}*" if self.pattern == "prefixed" else self.name
        return f"{self.operation.upper():<16} {kind} {name}"


# The groups the command-line readers name (librdkafka asks for a named group's coordinator, which
# takes DESCRIBE, though they only read assigned partitions); `replay`'s is a prefix of its readers'.
READERS = {"replay": "pipeline-replay", "redrive": "pipeline-redrive", "models": "pipeline-models"}


def lag_probe_group(group: str) -> str:
    """The group a lag reader's probe of `group`'s backlog names (`scaling.lag.BacklogReader`)."""
    return f"{group}.lag-probe"


def principal(component: str, names: Mapping[str, str] | None = None) -> str:
    """The component's principal: the operator's name for it, else `User:pipeline-<component>`."""
    given = (names or {}).get(component)
    if given is None:
        return f"User:pipeline-{component}"
    return given if ":" in given else f"User:{given}"


def consumer_group(settings: Settings, consumer: str) -> str:
    """A consumer's Kafka group: also its Faust app id and the prefix of its own topics."""
    return settings.consumers.group_id or f"pipeline-{consumer}"


def grants(settings: Settings, component: str) -> list[Grant]:
    """What `component` must be allowed, and nothing more. Raises KeyError for an unknown component.
    Each topic it writes, it may also read the config of: its min.insync.replicas is checked at start
    (`durability`), and the results' retention against the dedup window."""
    granted = _grants(settings, component)
    written = [g for g in granted if g.resource == "topic" and g.operation == "write"]
    return [*granted, *(Grant("topic", g.name, "describe_configs", g.pattern) for g in written)]


def _grants(settings: Settings, component: str) -> list[Grant]:
    t = settings.topics
    match component:
        case "worker":
            return [*_worker(settings), Grant("topic", t.replies, "write"), Grant("topic", t.shadow_results, "write")]
        case "backfill":
            backfill = settings.backfill()
            # Prefixed: a replay's own results topic (`replay --results-topic`) is named after it.
            return [
                *_worker(backfill, results_pattern="prefixed"),
                # The live group's lag, which it yields to (`worker.priority`).
                Grant("topic", t.requests, "describe"),
                Grant("group", settings.worker.app_id, "describe"),
            ]
        case "bridge":
            return [
                Grant("topic", t.requests, "write"),
                Grant("topic", t.replies, "read"),
                Grant("group", settings.gateway.reply_group or f"{t.replies}.gateways", "read"),
            ]
        case "fraud" | "anomaly" | "drift" | "guard":
            return _consumer(settings, component)
        case "replay":
            return [
                Grant("topic", t.requests, "read"),
                Grant("topic", t.results, "read"),
                Grant("topic", t.backfill_requests, "write"),
                Grant("topic", t.backfill_results, "read", "prefixed"),
                Grant("topic", t.replay_checkpoints, "read"),
                Grant("topic", t.replay_checkpoints, "write"),
                Grant("transactional_id", f"{settings.kafka.client_id}-replay-", "write", "prefixed"),
                Grant("group", READERS["replay"], "describe", "prefixed"),
            ]
        case "redrive":
            return [
                Grant("topic", t.dlq, "read"),
                Grant("topic", t.requests, "write"),
                Grant("group", READERS["redrive"], "describe"),
            ]
        case "scale":
            return [
                Grant("topic", t.requests, "read"),  # the oldest waiting record's time: the lag in seconds
                Grant("group", settings.worker.app_id, "describe"),  # its committed offsets and members
                Grant("group", lag_probe_group(settings.worker.app_id), "describe"),
                Grant("topic", t.scaling_rates, "read"),  # one worker's rate as learnt, read back at its start
                Grant("topic", t.scaling_rates, "write"),
            ]
        case "models":
            return [
                Grant("topic", t.model_routing, "read"),
                Grant("topic", t.model_routing, "write"),
                Grant("topic", t.results, "read"),  # `models compare`: the live results beside the shadow ones
                Grant("topic", t.shadow_results, "read"),
                Grant("group", READERS["models"], "describe"),
            ]
    raise KeyError(component)


def _worker(settings: Settings, results_pattern: Pattern = "literal") -> list[Grant]:
    t, app_id = settings.topics, settings.worker.app_id
    return [
        Grant("topic", t.requests, "read"),
        Grant("topic", t.results, "read", results_pattern),  # the dedup changelog, read back on assignment
        Grant("topic", t.results, "write", results_pattern),
        Grant("topic", t.dlq, "write"),
        Grant("topic", t.model_routing, "read"),
        Grant("group", app_id, "read", "prefixed"),  # its group, and the names of its readers
        Grant("transactional_id", f"{app_id}-", "write", "prefixed"),  # one per lane: <app_id>-<instance>-<lane>
    ]


def _consumer(settings: Settings, consumer: str) -> list[Grant]:
    t, group = settings.topics, consumer_group(settings, consumer)
    own = [
        Grant("group", group, "read", "prefixed"),  # its group, and its routing reader's (`<group>-routing`)
        # Faust's own topics (its tables' changelogs, its assignor's), created at its first start.
        Grant("topic", f"{group}-", "create", "prefixed"),
        Grant("topic", f"{group}-", "read", "prefixed"),
        Grant("topic", f"{group}-", "write", "prefixed"),
        Grant("topic", t.results, "read"),
    ]
    match consumer:
        case "fraud" | "anomaly":  # an alert table whose changelog is the alerts topic: read back, written
            alerts = t.alerts if consumer == "fraud" else t.anomaly_alerts
            # CREATE too: Faust declares a table's changelog topic at its start (the topic exists, so the
            # broker creates nothing), and stops when refused.
            return [*own, *(Grant("topic", alerts, op) for op in ("read", "write", "create"))]
        case "drift":  # the routing too: each model's scores are judged against its stable version's reference
            return [
                *own,
                Grant("topic", t.requests, "read"),
                Grant("topic", t.model_routing, "read"),
                Grant("topic", t.drift_alerts, "write"),
            ]
        case _:  # guard: the dead letters of each arm, the routing it follows and rolls back
            return [
                *own,
                Grant("topic", t.dlq, "read"),
                Grant("topic", t.model_routing, "read"),
                Grant("topic", t.model_routing, "write"),
                Grant("topic", t.drift_alerts, "write"),
            ]


def written(settings: Settings, component: str) -> list[str]:
    """The topics `component` writes (by name; a prefix's own name where it is one)."""
    return [g.name for g in grants(settings, component) if g.resource == "topic" and g.operation == "write"]


def recipe(settings: Settings, names: Mapping[str, str] | None = None) -> dict[str, list[Grant]]:
    """Every component's principal and its grants, in COMPONENTS' order."""
    return {principal(c, names): sorted(set(grants(settings, c))) for c in COMPONENTS}


def parse_principals(given: Iterable[str]) -> dict[str, str]:
    """`COMPONENT=PRINCIPAL` options as a mapping; raises ValueError naming a bad one."""
    names = {}
    for item in given:
        component, sep, name = item.partition("=")
        if not sep or not name or component not in COMPONENTS:
            raise ValueError(f"{item!r}: expected COMPONENT=PRINCIPAL with COMPONENT one of {', '.join(COMPONENTS)}")
        names[component] = name
    return names


def strimzi_users(recipe: Mapping[str, Iterable[Grant]]) -> dict[str, list[dict[str, object]]]:
    """The recipe as Strimzi `KafkaUser` ACLs (`spec.authorization.acls` of type simple), by user
    name: a SCRAM user `pipeline-worker` is the principal `User:pipeline-worker`. One rule per
    resource, its operations together."""
    users: dict[str, list[dict[str, object]]] = {}
    for who, granted in recipe.items():
        kind, _, name = who.partition(":")
        if kind != "User":
            raise ValueError(f"{who}: Strimzi's KafkaUser names a User principal")
        by_resource: dict[tuple[str, str, str], list[str]] = {}
        for grant in granted:
            pattern = "prefix" if grant.pattern == "prefixed" else "literal"
            key = (_STRIMZI_RESOURCE[grant.resource], grant.name, pattern)
            by_resource.setdefault(key, []).append("".join(part.capitalize() for part in grant.operation.split("_")))
        users[name] = [
            {"resource": {"type": kind_, "name": name_, "patternType": pattern}, "operations": sorted(set(operations))}
            for (kind_, name_, pattern), operations in sorted(by_resource.items())
        ]
    return users


_STRIMZI_RESOURCE: dict[str, str] = {
    "topic": "topic",
    "group": "group",
    "transactional_id": "transactionalId",
    "cluster": "cluster",
}
