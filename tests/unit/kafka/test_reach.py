"""Why the cluster cannot be reached, in one line (pipeline/kafka/reach.py)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError
from pydantic import SecretStr

from pipeline.kafka.reach import cause
from pipeline.settings import KafkaSettings

SECURED = KafkaSettings(
    bootstrap_servers="b1:9093",
    security_protocol="SASL_SSL",
    username="worker",
    password=SecretStr("s3cret-pw"),
    ssl_ca_file=Path("/etc/ca.pem"),
)
TRANSPORT = KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")


def test_a_failed_authentication_names_the_user_and_what_to_check_and_never_the_password():
    refused = KafkaError(
        KafkaError._AUTHENTICATION,
        "SASL authentication error: Authentication failed during authentication due to invalid credentials "
        "with SASL mechanism SCRAM-SHA-512 (after 12ms in state AUTH_REQ) s3cret-pw",
    )

    line = cause([refused, TRANSPORT], SECURED)

    assert line.startswith("kafka at b1:9093: authentication failed for user 'worker' (SCRAM-SHA-512)")
    assert "kafka.password" in line and "invalid credentials" in line
    assert "s3cret-pw" not in line and "after 12ms" not in line and "\n" not in line


def test_an_untrusted_certificate_points_at_the_ca_file():
    untrusted = KafkaError(
        KafkaError._SSL, "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed (after 4ms)"
    )

    line = cause([TRANSPORT, untrusted], SECURED)

    assert "TLS handshake failed" in line and "kafka.ssl_ca_file" in line and "certificate verify failed" in line


def test_with_no_telling_error_the_line_says_no_broker_answered():
    assert cause([TRANSPORT], SECURED) == "kafka at b1:9093: no broker answered (Failed to get metadata: " \
        "Local: Broker transport failure)"  # fmt: skip
    assert cause([], KafkaSettings()) == "kafka at 127.0.0.1:9092: no broker answered"
