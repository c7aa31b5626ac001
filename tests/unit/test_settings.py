from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from pipeline.local.stack import LocalStack, Ports, settings_env
from pipeline.settings import Settings
from pipeline.topics import load_specs


def test_nested_settings_come_from_prefixed_env(monkeypatch):
    monkeypatch.setenv("PIPELINE_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    monkeypatch.setenv("PIPELINE_WORKER__BATCH_SIZE", "512")
    monkeypatch.setenv("PIPELINE_TOPICS__REQUESTS", "custom.requests")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert settings.worker.batch_size == 512
    assert settings.topics.requests == "custom.requests"


def test_settings_survive_the_trip_through_a_child_process_env(monkeypatch, tmp_path: Path):
    settings = LocalStack(tmp_path, Ports(kafka=19999)).settings()
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19999"


def test_kafka_credentials_survive_the_trip_through_a_child_process_env(monkeypatch, tmp_path: Path):
    settings = Settings().updated(
        kafka={"security_protocol": "SASL_SSL", "username": "worker", "password": SecretStr("pw-1e8a")}
    )
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child == settings
    assert child.kafka.secret() == "pw-1e8a", "the password itself, not its mask"
    assert child.kafka.ssl_ca_file is None, "an unset file stays unset"


def test_topic_specs_take_their_names_from_settings(monkeypatch):
    monkeypatch.setenv("PIPELINE_TOPICS__DLQ", "my.dlq")
    specs = {spec.name: spec for spec in load_specs(Settings())}
    assert specs["inference.requests"].partitions == 12
    assert "my.dlq" in specs


def test_a_backfill_worker_reads_the_backfill_topics_in_a_group_of_its_own():
    live = Settings()
    backfill = live.backfill()
    assert (backfill.topics.requests, backfill.topics.results) == (
        "inference.requests.backfill",
        "inference.results.backfill",
    )
    assert backfill.worker.app_id == "pipeline-worker-backfill" != live.worker.app_id
    assert backfill.worker.metrics_port == 9104
    specs = {spec.name: spec for spec in load_specs(live)}
    assert specs["inference.requests.backfill"].partitions == specs["inference.requests"].partitions
    assert specs["replay.checkpoints"].config["cleanup.policy"] == "compact"
