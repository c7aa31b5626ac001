"""The connection block (`KafkaSettings`) as each client library spells it: librdkafka's properties,
aiokafka's arguments, Faust's broker credentials. Pure: no client is built here."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from pipeline.errors import ConfigurationError
from pipeline.settings import KafkaSettings


def librdkafka(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties of the connection: the servers and the security (`clients.config` puts a
    client's options, then `extra`, over them)."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
    }
    if _sasl(kafka):
        config |= {"sasl.mechanisms": kafka.sasl_mechanism, "sasl.username": kafka.username}
        config["sasl.password"] = _password(kafka)
    if _tls(kafka):
        files = {
            "ssl.ca.location": kafka.ssl_ca_file,
            "ssl.certificate.location": kafka.ssl_cert_file,
            "ssl.key.location": kafka.ssl_key_file,
        }
        config |= {name: str(path) for name, path in files.items() if path is not None}
        if kafka.ssl_key_password is not None:
            config["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    return config


def aiokafka(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka's keyword arguments for a consumer or producer (`extra` is librdkafka's: not here)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if _sasl(kafka):
        options |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.username,
            "sasl_plain_password": _password(kafka),
        }
    if _tls(kafka):
        options["ssl_context"] = ssl_context(kafka)
    return options


def faust(kafka: KafkaSettings) -> dict[str, Any]:
    """Faust's `broker` and `broker_credentials` app settings."""
    import faust as faust_module

    brokers = [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]
    credentials: Any = None
    if _sasl(kafka):
        credentials = faust_module.SASLCredentials(
            username=kafka.username,
            password=_password(kafka),
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context(kafka) if _tls(kafka) else None,
        )
    elif _tls(kafka):
        credentials = faust_module.SSLCredentials(ssl_context(kafka))
    return {"broker": brokers, "broker_credentials": credentials}


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context: the CA file's brokers trusted (else the system's), the client's own
    certificate presented when one is set (mutual TLS)."""
    password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password is not None else None
    try:
        return create_ssl_context(
            cafile=kafka.ssl_ca_file, certfile=kafka.ssl_cert_file, keyfile=kafka.ssl_key_file, password=password
        )
    except (OSError, ssl.SSLError) as e:
        # The reason names the file and what is wrong with it, never the key's password.
        reason = getattr(e, "reason", None) or e.strerror or type(e).__name__
        raise ConfigurationError(f"kafka TLS files: {reason}") from None


def _sasl(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol.startswith("SASL_")


def _tls(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol in ("SSL", "SASL_SSL")


def _password(kafka: KafkaSettings) -> str:
    password = kafka.secret()
    if not kafka.username or password is None:
        raise ConfigurationError(
            f"kafka.security_protocol {kafka.security_protocol} needs kafka.username and kafka.password "
            "(or kafka.password_file)"
        )
    return password
