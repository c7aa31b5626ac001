"""`docker-compose.yml`, checked without a container engine: against the Compose specification's
schema (deploy/schemas/compose/) and by Debian's `docker-compose config` under both Triton profiles;
its Prometheus configuration by promtool; and its coherence with the settings: every `PIPELINE_*`
variable is a setting, every health check and scrape target is the port the process serves on,
every job the alerting rules read is scraped, and the processes start after the set-up."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from pipeline.settings import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
SCHEMA = PROJECT_ROOT / "deploy" / "schemas" / "compose" / "compose-spec.schema.json"
PROMETHEUS = PROJECT_ROOT / "deploy" / "compose" / "prometheus.yml"
RULES = PROJECT_ROOT / "deploy" / "prometheus" / "rules.yml"
SETUP = {"topics", "features", "models", "gpu-configs"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def pipeline_services() -> dict[str, dict[str, Any]]:
    """The services running the image (`build: .`), set-up one-shots included."""
    return {name: s for name, s in services().items() if s.get("build") == "."}


def processes() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in pipeline_services().items() if name not in SETUP}


def is_setting(name: str) -> bool:
    """`PIPELINE_A__B` names a field b of block a of the settings (or a top-level field a)."""
    model: Any = Settings()
    for part in name.removeprefix("PIPELINE_").lower().split("__"):
        if not isinstance(model, BaseModel) or part not in type(model).model_fields:
            return False
        model = getattr(model, part)
    return not isinstance(model, BaseModel)


def settings_of(service: dict[str, Any]) -> Settings:
    """The settings the process builds from its environment (and nothing else)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
            patch.delenv(name)
        for name, value in service.get("environment", {}).items():
            if name.startswith("PIPELINE_"):
                patch.setenv(name, str(value))
        return Settings()


def docker_compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make setup` installs Debian's"
    return subprocess.run(
        [binary, "--project-directory", str(PROJECT_ROOT), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_file_validates_against_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(compose())


def test_a_misspelt_key_fails_the_schema():
    broken = compose()
    broken["services"]["worker"]["depends_onn"] = broken["services"]["worker"].pop("depends_on")
    with pytest.raises(jsonschema.ValidationError, match="depends_onn"):
        jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(broken)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_docker_compose_config_accepts_it(profile):
    result = docker_compose("--profile", profile, "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == set(services())


def test_docker_compose_config_refuses_a_dependency_on_no_service(tmp_path: Path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("redis: {condition: service_healthy}", "rediss: {condition: service_healthy}")
    )
    result = docker_compose("config", "-q", file=broken)
    assert result.returncode != 0 and "rediss" in result.stderr


def test_the_gpu_profile_reserves_a_gpu_and_both_tritons_answer_as_triton():
    every = services()
    reservation = every["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert reservation == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in ("triton-cpu", "triton-gpu"):
        assert every[name]["networks"]["default"]["aliases"] == ["triton"]
        assert "--model-control-mode=explicit" in every[name]["command"]
        assert "models:/models" in every[name]["volumes"]
    # The pipeline reaches whichever runs, by that alias, on the settings' ports.
    settings = settings_of(processes()["worker"])
    assert urlsplit(f"//{settings.triton.grpc_url}").hostname == "triton"
    assert every["triton-gpu"]["depends_on"] == {"gpu-configs": {"condition": "service_completed_successfully"}}


def test_every_pipeline_variable_is_a_setting():
    for name, service in pipeline_services().items():
        for variable in service.get("environment", {}):
            if variable.startswith("PIPELINE_"):
                assert is_setting(variable), f"{name}: {variable} is no setting"
    assert not is_setting("PIPELINE_WORKER__METRICS_PROT")


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def served_port(name: str, service: dict[str, Any]) -> int:
    """The port this process serves its health and metrics on, by its settings."""
    settings = settings_of(service)
    command = service["command"]
    if command[0] == "worker":
        backfill = "--backfill" in command
        return settings.replay.backfill_metrics_port if backfill else settings.worker.metrics_port
    if command[0] == "gateway":
        return settings.gateway.port
    if command[0] == "consumers":
        return settings.consumers.metrics_port
    if command[:2] == ["scale", "--serve"]:
        return settings.scaling.serve_port
    raise AssertionError(f"{name}: no port known for {command}")


def test_every_process_has_a_health_check_on_its_own_port_and_listens_beyond_localhost():
    for name, service in processes().items():
        env = service["environment"]
        assert _port(env["HEALTHCHECK_URL"]) == served_port(name, service), name
        settings = settings_of(service)
        host = {
            "worker": settings.worker.metrics_host,
            "gateway": settings.gateway.host,
            "consumers": settings.consumers.metrics_host,
            "scale": settings.scaling.serve_host,
        }[service["command"][0]]
        assert host == "0.0.0.0", f"{name} must be reachable by Prometheus"


def test_processes_start_after_the_set_up_and_the_set_up_after_healthy_services():
    every = services()
    for name, service in processes().items():
        assert service["depends_on"]["topics"] == {"condition": "service_completed_successfully"}, name
    scoring = {"worker", "backfill-worker", "drift-monitor", "rollout-guard"}
    for name in scoring:
        assert set(every[name]["depends_on"]) == {"topics", "features", "models"}, name
    assert every["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert every["features"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    for name in ("kafka", "redis", "triton-cpu", "triton-gpu", "prometheus", "grafana"):
        assert every[name]["healthcheck"]["test"][0] == "CMD", name
    for name in SETUP:
        assert every[name]["restart"] == "no", name


def test_the_workers_scale_each_with_a_state_of_its_own():
    worker = services()["worker"]
    assert "container_name" not in worker and not worker.get("ports"), "a fixed name or port forbids --scale"
    state = str(settings_of(worker).worker.state_dir)
    shared = [v.split(":")[1] for v in worker["volumes"] if not v.startswith(".")]
    assert all(not state.startswith(path) for path in shared), "the state is on no shared volume"


def test_prometheus_scrapes_every_job_the_rules_read_on_the_processes_ports(tmp_path: Path):
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"pipeline-worker", "pipeline-gateway", "pipeline-consumers", "pipeline-scale", "triton"}
    assert set(re.findall(r'job="([^"]+)"', RULES.read_text())) <= set(jobs)
    every = processes()
    worker_sd = jobs["pipeline-worker"]["dns_sd_configs"][0]
    assert set(worker_sd["names"]) == {"worker", "backfill-worker"}
    assert all(worker_sd["port"] == served_port(n, every[n]) for n in worker_sd["names"])
    targets = {t for job in config["scrape_configs"] for c in job.get("static_configs", []) for t in c["targets"]}
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "triton":
            assert int(port) == 8002
        else:
            assert int(port) == served_port(host, every[host]), target
    consumers = {n for n, s in every.items() if s["command"][0] == "consumers"}
    assert {t.split(":")[0] for t in jobs["pipeline-consumers"]["static_configs"][0]["targets"]} == consumers
    # promtool on the file as compose mounts it: the rules beside it.
    shutil.copy(PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "rules.yml")
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make setup` installs Debian's prometheus"
    checked = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    mounted = services()["prometheus"]["volumes"]
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounted
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in mounted


def test_grafana_is_provisioned_with_the_dashboards_and_prometheus():
    mounted = services()["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounted
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounted
    for local in (v.split(":")[0] for v in mounted if v.startswith("./")):
        assert (PROJECT_ROOT / local).is_dir(), local


def test_the_feature_store_is_redis_on_the_redis_service():
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose" / "feature_store.yaml").read_text())
    shipped = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    assert config["online_store"] == {"type": "redis", "connection_string": "redis:6379"}
    assert {k: v for k, v in config.items() if k != "online_store"} == {
        k: v for k, v in shipped.items() if k != "online_store"
    }
    for name, service in pipeline_services().items():
        if name == "gpu-configs":
            continue
        repo = str(settings_of(service).feast.repo_path)
        assert f"./deploy/compose/feature_store.yaml:{repo}/feature_store.yaml:ro" in service["volumes"], name
