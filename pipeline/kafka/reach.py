"""Why this process cannot reach the cluster as its settings connect it, in one line. librdkafka
reports a wrong password or an untrusted certificate to its error callback and a request only fails
with "broker transport failure" once it times out; asking the cluster again with the callback on
names the cause (`check`), and a failed command says that instead (`pipeline.cli.main`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import suppress

from confluent_kafka import KafkaError, KafkaException

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.settings import KafkaSettings, Settings

_TELLING = {KafkaError._AUTHENTICATION, KafkaError._SSL}  # causes no retry will change


def check(settings: Settings, timeout_s: float = 10.0) -> None:
    """Returns once a broker answers a metadata request; else `ConfigurationError` naming the cause, as
    soon as one is known (a refused password or certificate shows within a second)."""
    seen: list[KafkaError] = []
    admin = clients.admin(settings, {"error_cb": seen.append, "log_level": 2})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(1.0, timeout_s))
            return
        except KafkaException as e:
            admin.poll(0)  # the error callbacks queued meanwhile
            if _TELLING & {error.code() for error in seen} or time.monotonic() >= deadline:
                raise ConfigurationError(cause([*seen, e.args[0]], settings.kafka)) from None


def cause(errors: Sequence[KafkaError], kafka: KafkaSettings) -> str:
    """Pure: the most telling of `errors` as one line, with what to check; never a secret."""
    codes = {e.code(): e for e in errors}
    where = f"kafka at {kafka.bootstrap_servers}"
    if (auth := codes.get(KafkaError._AUTHENTICATION)) is not None:
        line = (
            f"{where}: authentication failed for user {kafka.username!r} ({kafka.sasl_mechanism}): "
            f"check kafka.username and kafka.password ({_reason(auth)})"
        )
    elif (tls := codes.get(KafkaError._SSL)) is not None:
        line = (
            f"{where}: TLS handshake failed: check that kafka.ssl_ca_file is the CA that signed the brokers' "
            f"certificates, and the client certificate if the brokers ask for one ({_reason(tls)})"
        )
    elif errors:
        line = f"{where}: no broker answered ({_reason(errors[-1])})"
    else:
        line = f"{where}: no broker answered"
    return _redacted(line, kafka)


def _reason(error: KafkaError) -> str:
    """librdkafka's reason without its trailing "(after N ms in state X)"."""
    return error.str().split(" (after ")[0].strip()


def _redacted(line: str, kafka: KafkaSettings) -> str:
    secrets = [kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None]
    with suppress(ConfigurationError):  # an unreadable password file: no password to leak
        secrets.append(kafka.secret())
    for secret in filter(None, secrets):
        line = line.replace(secret, "***")
    return line
