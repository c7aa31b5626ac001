from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import faust
import pytest

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients, connection
from pipeline.settings import KafkaSettings, Settings

PASSWORD = "pw-4f7c1e9b"  # a value no other setting would hold
KEY_PASSWORD = "key-pw-93ad05"


def sasl_ssl(tmp_path: Path, **fields: object) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": "k1:9093,k2:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "username": "worker",
            "password": PASSWORD,
            "ssl_ca_file": tmp_path / "ca.pem",
            "ssl_cert_file": tmp_path / "client.pem",
            "ssl_key_file": tmp_path / "client.key",
            "ssl_key_password": KEY_PASSWORD,
        }
        | fields
    )


def test_plaintext_gives_only_the_servers_and_the_protocol():
    kafka = KafkaSettings(bootstrap_servers="k1:9092, k2:9092")
    assert connection.librdkafka(kafka) == {"bootstrap.servers": "k1:9092, k2:9092", "security.protocol": "PLAINTEXT"}
    assert connection.aiokafka(kafka) == {"bootstrap_servers": "k1:9092, k2:9092", "security_protocol": "PLAINTEXT"}
    assert connection.faust(kafka) == {"broker": ["kafka://k1:9092", "kafka://k2:9092"], "broker_credentials": None}


def test_sasl_ssl_gives_the_mechanism_the_credentials_and_the_tls_files(tmp_path):
    assert connection.librdkafka(sasl_ssl(tmp_path)) == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-256",
        "sasl.username": "worker",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
        "ssl.key.password": KEY_PASSWORD,
    }


def test_tls_files_not_set_are_left_to_librdkafka(tmp_path):
    kafka = sasl_ssl(tmp_path, ssl_ca_file=None, ssl_cert_file=None, ssl_key_file=None, ssl_key_password=None)
    config = connection.librdkafka(kafka)
    assert not any(name.startswith("ssl.") for name in config), "the system's CAs, no client certificate"
    assert config["sasl.password"] == PASSWORD


def test_the_password_comes_from_its_file_without_the_last_newline(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-the-file\n")
    kafka = sasl_ssl(tmp_path, password=None, password_file=secret)
    assert connection.librdkafka(kafka)["sasl.password"] == "from-the-file"
    assert sasl_ssl(tmp_path, password_file=secret).secret() == "from-the-file", "the file over the setting"


def test_sasl_for_aiokafka_and_faust_carries_the_same_credentials_and_a_tls_context():
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", username="worker", password=PASSWORD, ssl_ca_file=Path(certifi.where())
    )
    options = connection.aiokafka(kafka)
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "worker",
        PASSWORD,
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = connection.faust(kafka)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("worker", PASSWORD)
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_sasl_plaintext_has_no_tls():
    kafka = KafkaSettings(security_protocol="SASL_PLAINTEXT", username="worker", password=PASSWORD)
    assert "ssl_context" not in connection.aiokafka(kafka)
    assert not any(name.startswith("ssl.") for name in connection.librdkafka(kafka))


def test_extra_wins_over_the_connection_and_over_a_clients_own_options(tmp_path):
    extra = {"bootstrap.servers": "other:9092", "sasl.password": "overridden", "linger.ms": 7}
    kafka = sasl_ssl(tmp_path, extra=extra)
    config = clients.config(Settings(kafka=kafka), {"linger.ms": 5, "bootstrap.servers": "mine:9092", "acks": "all"})
    assert config.items() >= (extra | {"acks": "all"}).items()


@pytest.mark.parametrize("missing", [{"username": ""}, {"password": None}])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_a_username_or_password_is_refused_without_showing_the_password(tmp_path, protocol, missing):
    kafka = sasl_ssl(tmp_path, security_protocol=protocol, **missing)
    for spelling in (connection.librdkafka, connection.aiokafka, connection.faust):
        with pytest.raises(ConfigurationError) as refused:
            spelling(kafka)
        assert "kafka.username" in str(refused.value)
        assert PASSWORD not in str(refused.value)


def test_unreadable_tls_files_are_refused_without_showing_the_key_password(tmp_path):
    kafka = KafkaSettings(security_protocol="SSL", ssl_ca_file=tmp_path / "missing.pem", ssl_key_password=KEY_PASSWORD)
    with pytest.raises(ConfigurationError) as refused:
        connection.aiokafka(kafka)
    assert "kafka TLS files" in str(refused.value)
    assert KEY_PASSWORD not in str(refused.value)


def test_the_passwords_never_show_in_the_settings_repr_or_json(tmp_path):
    settings = Settings(kafka=sasl_ssl(tmp_path))
    for shown in (repr(settings.kafka), str(settings.kafka), repr(settings), settings.model_dump_json()):
        assert PASSWORD not in shown
        assert KEY_PASSWORD not in shown
