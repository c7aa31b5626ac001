"""The ACL recipe (`acls.py`) and SCRAM users, created on a cluster through the admin API."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import Grant
from pipeline.settings import Settings

_RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER,
}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
_MECHANISMS = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}
SCRAM_ITERATIONS = 8192


def binding(principal: str, grant: Grant) -> AclBinding:
    """The ALLOW binding of `grant` for `principal`, from any host."""
    name = "kafka-cluster" if grant.resource == "cluster" else grant.name
    return AclBinding(
        _RESOURCES[grant.resource],
        name,
        _PATTERNS[grant.pattern],
        principal,
        "*",
        AclOperation[grant.operation.upper()],
        AclPermissionType.ALLOW,
    )


def apply(settings: Settings, recipe: Mapping[str, list[Grant]], timeout_s: float = 30.0) -> int:
    """Creates every binding of `recipe` (creating one that exists changes nothing); how many."""
    bindings = [binding(principal, grant) for principal, granted in recipe.items() for grant in granted]
    admin = clients.admin(settings, clients.QUIET)
    _done(admin.create_acls(bindings, request_timeout=timeout_s), "the ACL {}")
    return len(bindings)


def upsert_users(settings: Settings, passwords: Mapping[str, str], timeout_s: float = 30.0) -> None:
    """SCRAM credentials (the settings' mechanism) for each user, created or replaced."""
    mechanism = _MECHANISMS.get(settings.kafka.sasl_mechanism)
    if mechanism is None:
        raise ConfigurationError(f"kafka.sasl_mechanism {settings.kafka.sasl_mechanism}: users are made for SCRAM only")
    info = ScramCredentialInfo(mechanism, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, password.encode()) for user, password in passwords.items()
    ]
    admin = clients.admin(settings, clients.QUIET)
    _done(admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s), "the SCRAM credentials of {!r}")


def _done(futures: Mapping[Any, Future[Any]], what: str) -> None:
    """Each admin request's outcome; the first refused one as a `ConfigurationError` naming it (`what`
    formatted with its key: never a password, which no key holds)."""
    for key, future in futures.items():
        try:
            future.result()
        except KafkaException as e:
            raise ConfigurationError(f"{what.format(key)} was refused: {e.args[0].str()}") from e
