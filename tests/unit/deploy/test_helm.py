"""The Helm chart (deploy/helm/streaming-inference-pipeline), checked offline: `helm lint` and
`helm template` (helm built from its Go module by `make setup`) for the default values and each
file in its ci/ folder, every rendered object against the schemas it must meet, and against the
project's own settings and topics (docs/kubernetes.md#validation).

- Built-in kinds: kubernetes-validate's strict schemas (an unknown field fails), for each version
  in KUBERNETES_VERSIONS.
- KEDA ScaledObjects: the CRD's schema in deploy/schemas/keda, closed the same way, its CEL rule,
  and each trigger's metadata against KEDA's generated list of scaler parameters. Strimzi's
  KafkaTopic and KafkaUser: their CRDs' schemas in deploy/schemas/strimzi, closed.
- Coherence: what one object names, another provides (Services, ports, the policy URL, the
  StatefulSet, Secrets), the limits fit topics/topics.yaml, the topics and ACLs are the project's,
  and every PIPELINE_* variable is one the settings accept.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.kafka import acls
from pipeline.settings import PROJECT_ROOT, Settings

CHART = PROJECT_ROOT / "deploy" / "helm" / "streaming-inference-pipeline"
HELM = PROJECT_ROOT / ".tools" / "bin" / "helm"
KEDA_SCHEMAS = PROJECT_ROOT / "deploy" / "schemas" / "keda"
STRIMZI_SCHEMAS = PROJECT_ROOT / "deploy" / "schemas" / "strimzi"
RELEASE, NAMESPACE = "pipeline", "pipeline"
# The renderings checked: the default values, and each values file in the chart's ci/ folder.
RENDERINGS = ("default", *sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml")))
TOPICS = PROJECT_ROOT / "topics" / "topics.yaml"

# The oldest version the manifests target (the HPA `tolerance` field KEDA passes on appears in
# 1.33) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.33", "1.37")
# Kinds without a built-in schema; anything else must validate (an apiVersion typo must not skip).
NOT_BUILT_IN = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("kafka.strimzi.io/v1", "KafkaTopic"),
    ("kafka.strimzi.io/v1", "KafkaUser"),
}
WORKLOADS = {"Deployment", "StatefulSet"}
# What a fieldRef gives at run time, for checking the variables built from it.
FIELD_SAMPLES = {"status.podIP": "10.1.2.3", "metadata.namespace": "pipeline"}
SECRET_SAMPLE = '["an-api-key"]'  # what a secretKeyRef gives (the bridge's API keys)


# ---------------------------------------------------------------------------------------------
# Loading


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), f"{HELM} is missing: `make setup` builds it"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def values_args(rendering: str) -> list[str]:
    return [] if rendering == "default" else ["-f", str(CHART / "ci" / f"{rendering}-values.yaml")]


def render(rendering: str = "default", *extra: str) -> list[dict[str, Any]]:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(rendering), *extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


RENDERED = {rendering: render(rendering) for rendering in RENDERINGS}


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for rendering, docs in RENDERED.items():
        for doc in docs:
            yield rendering, doc


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    rendering, doc = item
    return f"{rendering}:{doc['kind']}/{doc.get('metadata', {}).get('name', '')}"


ALL_DOCS = list(documents())
BUILT_IN = [item for item in ALL_DOCS if (item[1]["apiVersion"], item[1]["kind"]) not in NOT_BUILT_IN]
SCALED_OBJECTS = [item for item in ALL_DOCS if item[1]["kind"] == "ScaledObject"]
STRIMZI = [item for item in ALL_DOCS if item[1]["apiVersion"].startswith("kafka.strimzi.io/")]


def find(kind: str, name: str, rendering: str = "default") -> dict[str, Any]:
    """The one object of this kind and name in a rendering."""
    found = [doc for doc in RENDERED[rendering] if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in {rendering}, found {len(found)}"
    return found[0]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def container_env(workload: dict[str, Any], container: dict[str, Any], rendering: str = "default") -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps, then env in order, with
    fieldRefs and secretKeyRefs replaced by sample values and $(VAR) expanded from the variables
    defined before."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]
        config = find("ConfigMap", ref["name"], rendering)
        env.update({source.get("prefix", "") + k: str(v) for k, v in config.get("data", {}).items()})
    pod_name = workload["metadata"]["name"] + ("-0" if workload["kind"] == "StatefulSet" else "-7c9d8f6b5-x2x4q")
    for entry in container.get("env", []):
        if "secretKeyRef" in entry.get("valueFrom", {}):
            value = SECRET_SAMPLE
        elif "valueFrom" in entry:
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            value = pod_name if field == "metadata.name" else FIELD_SAMPLES[field]
        else:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
        env[entry["name"]] = value
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the process would build them from this environment (and nothing else)."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("PIPELINE_"):
                patch.setenv(name, value)
        return Settings()


def pipeline_env(env: dict[str, str]) -> dict[str, str]:
    """The PIPELINE_* variables, less PIPELINE_SCALING__* where the settings have no such block yet."""
    names = {n: v for n, v in env.items() if n.startswith("PIPELINE_")}
    if "scaling" not in Settings.model_fields:
        names = {n: v for n, v in names.items() if not n.startswith("PIPELINE_SCALING__")}
    return names


def partitions(role: str) -> int:
    return int(yaml.safe_load(TOPICS.read_text())[role]["partitions"])


# ---------------------------------------------------------------------------------------------
# Validators


def validate_built_in(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def closed(schema: Any) -> Any:
    """A copy in which every object that lists its properties allows no others (as kubeconform's
    -strict, and as the API server's strict field validation treats fields it would prune)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties", "definitions", "$defs"):
        if key in out:
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in ("items", "anyOf", "allOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [closed(sub) for sub in out[key]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def keda_validator(name: str) -> jsonschema.protocols.Validator:
    schema = closed(json.loads((KEDA_SCHEMAS / name).read_text()))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


SCALED_OBJECT = keda_validator("scaledobject.schema.json")
SCALERS = {
    s["type"]: s["parameters"] for s in json.loads((KEDA_SCHEMAS / "scalers-metadata.json").read_text())["scalers"]
}


def validate_scaled_object(doc: dict[str, Any]) -> None:
    SCALED_OBJECT.validate(doc)
    spec = doc["spec"]
    # The CRD's CEL rule (x-kubernetes-validations), which JSON Schema cannot express.
    if "minReplicaCount" in spec:
        assert spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100), "minReplicaCount > maxReplicaCount"
    for trigger in spec["triggers"]:
        errors = trigger_errors(trigger)
        assert not errors, "; ".join(errors)


def trigger_errors(trigger: dict[str, Any]) -> list[str]:
    """What is wrong with a trigger's metadata against KEDA's list of that scaler's parameters:
    unknown keys, values outside the allowed ones, required parameters missing."""
    kind = trigger["type"]
    if kind not in SCALERS:
        return [f"unknown trigger type {kind!r}"]
    params = {p["name"]: p for p in SCALERS[kind]}
    allowed = {n for n, p in params.items() if p.get("metadataVariableReadable")}
    allowed |= {n + "FromEnv" for n, p in params.items() if p.get("envVariableReadable")}
    metadata = trigger["metadata"]
    errors = [f"{kind}: unknown metadata key {key!r}" for key in metadata if key not in allowed]
    for key, value in metadata.items():
        choices = params.get(key, {}).get("allowedValue")
        if choices and value not in choices:
            errors.append(f"{kind}: {key}={value!r} is not one of {choices}")
    for name, p in params.items():
        required = not p.get("optional") and "default" not in p
        given = name in metadata or name + "FromEnv" in metadata
        by_auth = p.get("triggerAuthenticationVariableReadable") and "authenticationRef" in trigger
        if required and not given and not by_auth:
            errors.append(f"{kind}: required metadata {name!r} missing")
    if trigger.get("metricType", "AverageValue") not in ("AverageValue", "Value", "Utilization"):
        errors.append(f"{kind}: metricType {trigger['metricType']!r}")
    return errors


# ---------------------------------------------------------------------------------------------
# Schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", BUILT_IN, ids=doc_id)
def test_built_in_kinds_validate_strictly(item: tuple[Path, dict[str, Any]], version: str) -> None:
    validate_built_in(item[1], version)


def test_only_keda_and_strimzi_kinds_go_without_a_built_in_schema() -> None:
    # Every other object is validated above, where a kind without a schema (a misspelt
    # apiVersion, say) fails with SchemaNotFoundError instead of being skipped.
    assert {(doc["apiVersion"], doc["kind"]) for _, doc in ALL_DOCS} & NOT_BUILT_IN == NOT_BUILT_IN
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_built_in({**find("Service", "pipeline-worker"), "apiVersion": "core/v1"}, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize("item", SCALED_OBJECTS, ids=doc_id)
def test_scaled_objects_validate_against_keda(item: tuple[Path, dict[str, Any]]) -> None:
    validate_scaled_object(item[1])


def test_a_misspelt_field_fails_strict_validation() -> None:
    worker = copy.deepcopy(find("StatefulSet", "pipeline-worker"))
    worker["spec"]["serviceNme"] = worker["spec"].pop("serviceName")
    with pytest.raises(kubernetes_validate.ValidationError, match="serviceNme"):
        validate_built_in(worker, KUBERNETES_VERSIONS[0])
    worker = copy.deepcopy(find("StatefulSet", "pipeline-worker"))
    containers(worker)[0]["imagePulPolicy"] = containers(worker)[0].pop("imagePullPolicy")
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePulPolicy"):
        validate_built_in(worker, KUBERNETES_VERSIONS[0])


def test_a_wrong_scaled_object_fails_the_keda_schema() -> None:
    scaled = find("ScaledObject", "pipeline-worker")
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["maxReplicas"] = wrong["spec"].pop("maxReplicaCount")  # an HPA name, not KEDA's
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        SCALED_OBJECT.validate(wrong)
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["triggers"][0]["metadata"]["targetValue"] = 1  # metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        SCALED_OBJECT.validate(wrong)
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["stabilisationWindowSeconds"] = 0
    with pytest.raises(jsonschema.ValidationError, match="stabilisationWindowSeconds"):
        SCALED_OBJECT.validate(wrong)


def test_a_misspelt_trigger_parameter_is_caught() -> None:
    kafka = copy.deepcopy(find("ScaledObject", "pipeline-worker", "kafka-trigger"))
    trigger = kafka["spec"]["triggers"][0]
    trigger["metadata"]["lagTreshold"] = trigger["metadata"].pop("lagThreshold")
    trigger["metadata"]["offsetResetPolicy"] = "oldest"
    del trigger["metadata"]["consumerGroup"]
    assert sorted(trigger_errors(trigger)) == [
        "kafka: offsetResetPolicy='oldest' is not one of ['latest', 'earliest']",
        "kafka: required metadata 'consumerGroup' missing",
        "kafka: unknown metadata key 'lagTreshold'",
    ]


@pytest.mark.parametrize("item", SCALED_OBJECTS, ids=doc_id)
def test_the_hpa_keda_derives_validates(item: tuple[Path, dict[str, Any]]) -> None:
    """KEDA copies `advanced.horizontalPodAutoscalerConfig.behavior` into the HPA it creates: it must be
    a valid autoscaling/v2 behaviour; its `tolerance` fields need Kubernetes 1.33 or later."""
    scaled = item[1]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}", "namespace": scaled["metadata"]["namespace"]},
        "spec": {
            "scaleTargetRef": scaled["spec"]["scaleTargetRef"],
            "minReplicas": scaled["spec"]["minReplicaCount"],
            "maxReplicas": scaled["spec"]["maxReplicaCount"],
            "behavior": scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "s0-metric"},
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
        },
    }
    for version in KUBERNETES_VERSIONS:
        validate_built_in(hpa, version)
    if any("tolerance" in rules for rules in hpa["spec"]["behavior"].values()):
        with pytest.raises(kubernetes_validate.ValidationError, match="tolerance"):
            validate_built_in(hpa, "1.32")


# ---------------------------------------------------------------------------------------------
# The chart


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_helm_lint_passes_strictly(rendering: str) -> None:
    result = helm("lint", "--strict", str(CHART), *values_args(rendering))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_renderings_are_the_defaults_a_gpu_and_secured_install_and_the_kafka_trigger() -> None:
    assert RENDERINGS == ("default", "gpu-secured", "kafka-trigger")


def test_a_missing_value_is_a_one_line_error() -> None:
    result = helm("template", RELEASE, str(CHART), "--set", "triton.enabled=false")
    assert result.returncode != 0 and "triton.external.grpcUrl when triton.enabled is false" in result.stderr


def test_every_object_is_in_the_release_namespace_and_labelled_as_part_of_the_pipeline() -> None:
    for rendering, doc in ALL_DOCS:
        assert doc["metadata"].get("namespace") == NAMESPACE, doc_id((rendering, doc))
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "streaming-inference-pipeline"


def test_every_process_the_pipeline_runs_is_deployed() -> None:
    commands = {" ".join(c["command"]) for _, doc in ALL_DOCS if doc["kind"] in WORKLOADS for c in containers(doc)}
    for command in (
        "pipeline worker",
        "pipeline worker --backfill",
        "pipeline gateway",
        "pipeline consumers fraud",
        "pipeline consumers anomaly",
        "pipeline consumers drift",
        "pipeline consumers guard",
        "pipeline scale --serve",
        "tritonserver",
    ):
        assert command in commands, command


# ---------------------------------------------------------------------------------------------
# Coherence


def test_services_select_pods_and_reach_their_ports() -> None:
    workloads = [doc for doc in RENDERED["default"] if doc["kind"] in WORKLOADS]
    for service in (doc for doc in RENDERED["default"] if doc["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        selected = [w for w in workloads if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for workload in selected:
            ports = [port for c in containers(workload) for port in c.get("ports", [])]
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                key = "name" if isinstance(target, str) else "containerPort"
                assert any(p.get(key) == target for p in ports), f"{service['metadata']['name']}: no port {target}"


def test_workloads_select_their_own_pods_and_probe_declared_ports() -> None:
    workloads = [doc for _, doc in ALL_DOCS if doc["kind"] in WORKLOADS]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for container in containers(workload):
            ports = container.get("ports", [])
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe not in container:
                    continue
                action = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                key = "name" if isinstance(action["port"], str) else "containerPort"
                assert any(p.get(key) == action["port"] for p in ports), f"{probe} on an undeclared port"


def test_the_worker_is_a_stateful_set_named_by_its_pods() -> None:
    worker = find("StatefulSet", "pipeline-worker")
    spec = worker["spec"]
    service = find("Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # the governing Service is headless
    assert spec["podManagementPolicy"] == "Parallel"
    (container,) = containers(worker)
    assert container["command"] == ["pipeline", "worker"]
    (instance,) = [e for e in container["env"] if e["name"] == "PIPELINE_WORKER__INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    env = container_env(worker, container)
    (state,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["PIPELINE_WORKER__STATE_DIR"]]
    assert state["name"] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    (metrics,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert str(metrics["containerPort"]) == env["PIPELINE_WORKER__METRICS_PORT"]
    assert env["PIPELINE_WORKER__METRICS_HOST"] == "0.0.0.0"


def test_the_worker_stops_within_its_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = find("StatefulSet", "pipeline-worker")
    settings = settings_from(container_env(worker, containers(worker)[0]), monkeypatch)
    stop_timeout = settings.scaling.stop_timeout_s if "scaling" in Settings.model_fields else 30.0
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > max(stop_timeout, 30)


def test_the_gateway_advertises_its_own_answer_port() -> None:
    gateway = find("Deployment", "pipeline-gateway")
    (container,) = containers(gateway)
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_IP") < names.index("PIPELINE_GATEWAY__ANSWER_ADVERTISE")
    env = container_env(gateway, container)
    assert env["PIPELINE_GATEWAY__ANSWER_ADVERTISE"] == f"{FIELD_SAMPLES['status.podIP']}:9200"
    assert env["PIPELINE_GATEWAY__ANSWER_ADVERTISE"].rsplit(":", 1)[1] == env["PIPELINE_GATEWAY__ANSWER_PORT"]
    ports = {p["name"]: str(p["containerPort"]) for p in container["ports"]}
    assert ports == {"http": env["PIPELINE_GATEWAY__PORT"], "answers": env["PIPELINE_GATEWAY__ANSWER_PORT"]}
    # Each instance claims one replies partition: test_the_bridge_autoscaler_fits_the_replies_partitions.


@pytest.mark.parametrize("item", SCALED_OBJECTS, ids=doc_id)
def test_scaled_objects_fit_the_requests_topic(item: tuple[Path, dict[str, Any]]) -> None:
    spec = item[1]["spec"]
    assert spec["maxReplicaCount"] <= partitions("requests")  # a worker beyond would hold none
    assert partitions("requests") % spec["maxReplicaCount"] == 0  # the top is an even step
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "StatefulSet")
    find("StatefulSet", target["name"])


def test_keda_asks_the_policy_service(monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = find("ScaledObject", "pipeline-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    assert (trigger["metricType"], trigger["metadata"]["targetValue"]) == ("AverageValue", "1")
    assert trigger["metadata"]["valueLocation"] == "desired_workers"
    url = urlsplit(trigger["metadata"]["url"])
    assert url.path == "/desired"
    name, namespace, *rest = url.hostname.split(".")
    assert rest in (["svc"], ["svc", "cluster", "local"])
    service = find("Service", name)
    assert service["metadata"]["namespace"] == namespace
    ports = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert len(ports) == 1, f"Service {name} has no port {url.port}"
    port = ports[0]
    scaler = find("Deployment", "pipeline-scaler")
    (container,) = containers(scaler)
    assert container["command"] == ["pipeline", "scale", "--serve"]
    assert service["spec"]["selector"].items() <= scaler["spec"]["template"]["metadata"]["labels"].items()
    (served,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    env = container_env(scaler, container)
    assert str(served["containerPort"]) == env["PIPELINE_SCALING__SERVE_PORT"]
    assert env["PIPELINE_SCALING__SERVE_HOST"] == "0.0.0.0"
    if "scaling" in Settings.model_fields:
        limits = settings_from(env, monkeypatch).scaling
        assert (limits.min_workers, limits.max_workers) == (
            scaled["spec"]["minReplicaCount"],
            scaled["spec"]["maxReplicaCount"],
        )
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    for direction in ("scaleUp", "scaleDown"):  # the policy's decision passes through unchanged
        assert behavior[direction]["stabilizationWindowSeconds"] == 0
        assert any(p["type"] == "Percent" and p["value"] >= 100 for p in behavior[direction]["policies"])
    assert any(
        p["type"] == "Pods" and p["value"] >= scaled["spec"]["maxReplicaCount"] for p in behavior["scaleUp"]["policies"]
    )


def test_the_kafka_scaler_mirrors_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = find("ScaledObject", "pipeline-worker", "kafka-trigger")
    (trigger,) = kafka["spec"]["triggers"]
    meta = trigger["metadata"]
    worker = find("StatefulSet", "pipeline-worker")
    worker_settings = settings_from(container_env(worker, containers(worker)[0]), monkeypatch)
    assert meta["consumerGroup"] == worker_settings.worker.app_id
    assert meta["topic"] == worker_settings.topics.requests
    assert meta["bootstrapServers"] == worker_settings.kafka.bootstrap_servers
    # KEDA's own checks (kafka_scaler.go, kafkaMetadata.Validate).
    assert int(meta["lagThreshold"]) > 0 and int(meta["activationLagThreshold"]) >= 0
    flags = {k: meta.get(k, "false") == "true" for k in ("allowIdleConsumers", "limitToPartitionsWithLag")}
    even = meta.get("ensureEvenDistributionOfPartitions") == "true"
    assert not (flags["allowIdleConsumers"] and flags["limitToPartitionsWithLag"])
    assert not (flags["limitToPartitionsWithLag"] and even)
    assert even and not flags["allowIdleConsumers"]
    # Commit markers leave a lag of 1 per partition: that alone is no activity.
    assert int(meta["activationLagThreshold"]) >= partitions("requests")
    if "scaling" not in Settings.model_fields:
        return
    scaler = find("Deployment", "pipeline-scaler")
    policy = settings_from(container_env(scaler, containers(scaler)[0]), monkeypatch).scaling
    # One worker drains lagThreshold records within the drain target, at its default rate.
    assert int(meta["lagThreshold"]) == math.ceil(policy.worker_rate_per_s * policy.drain_s)
    assert (kafka["spec"]["minReplicaCount"], kafka["spec"]["maxReplicaCount"]) == (
        policy.min_workers,
        policy.max_workers,
    )
    behavior = kafka["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert {p["periodSeconds"] for p in behavior["scaleUp"]["policies"]} == {policy.up_cooldown_s}
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == policy.down_window_s


@pytest.mark.parametrize(
    "name",
    [(r, w["kind"], w["metadata"]["name"]) for r, w in ALL_DOCS if w["kind"] in WORKLOADS | {"Job"}],
    ids=lambda n: "/".join(n),
)
def test_every_pipeline_variable_is_a_setting(name: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each PIPELINE_* variable a container gets names a field of the settings (the nested blocks
    refuse unknown fields; an unknown top-level name would be ignored, so it is looked up here) and
    its value is accepted."""
    rendering, kind, workload_name = name
    workload = find(kind, workload_name, rendering)
    for container in containers(workload):
        if container["command"][0] == "tritonserver":
            continue
        env = pipeline_env(container_env(workload, container, rendering))
        assert env, "no PIPELINE_* settings"
        for value in env.values():
            assert "$(" not in value, f"unexpanded reference in {value!r}"
        settings = settings_from(env, monkeypatch)
        for variable in env:
            node: Any = settings
            for part in variable.removeprefix("PIPELINE_").lower().split("__"):
                assert part in type(node).model_fields, f"{variable}: no setting {part!r}"
                node = getattr(node, part)


# ---------------------------------------------------------------------------------------------
# Strimzi, Kafka credentials and the ACL recipe

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# The ACL recipe's component each workload runs as.
USERS = {
    "worker": "worker",
    "backfill-worker": "backfill",
    "gateway": "bridge",
    "fraud-consumer": "fraud",
    "anomaly-consumer": "anomaly",
    "drift-consumer": "drift",
    "guard-consumer": "guard",
    "scaler": "scale",
    "setup": "models",
}


def strimzi_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = closed(json.loads((STRIMZI_SCHEMAS / f"{kind.lower()}.schema.json").read_text()))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


STRIMZI_VALIDATORS = {kind: strimzi_validator(kind) for kind in ("KafkaTopic", "KafkaUser")}


@pytest.mark.parametrize("item", STRIMZI, ids=doc_id)
def test_strimzi_resources_validate_against_their_crds(item: tuple[str, dict[str, Any]]) -> None:
    STRIMZI_VALIDATORS[item[1]["kind"]].validate(item[1])


def test_a_wrong_strimzi_resource_fails_its_schema() -> None:
    topic = copy.deepcopy(next(doc for _, doc in STRIMZI if doc["kind"] == "KafkaTopic"))
    topic["spec"]["partition"] = topic["spec"].pop("partitions")
    with pytest.raises(jsonschema.ValidationError, match="partition"):
        STRIMZI_VALIDATORS["KafkaTopic"].validate(topic)
    user = copy.deepcopy(next(doc for _, doc in STRIMZI if doc["kind"] == "KafkaUser"))
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Reed"]
    with pytest.raises(jsonschema.ValidationError, match="Reed"):
        STRIMZI_VALIDATORS["KafkaUser"].validate(user)


def test_the_kafka_topics_are_the_contracts_with_their_partitions_and_configuration() -> None:
    contract = yaml.safe_load(TOPICS.read_text())
    assert (CHART / "files" / "topics.yaml").read_text() == TOPICS.read_text(), "files/topics.yaml is a copy"
    names = Settings().topics
    rendered = {
        d["spec"]["topicName"]: d["spec"] for r, d in STRIMZI if r == "gpu-secured" and d["kind"] == "KafkaTopic"
    }
    assert set(rendered) == {getattr(names, role) for role in contract}
    for role, spec in contract.items():
        topic = rendered[getattr(names, role)]
        assert topic["partitions"] == spec["partitions"]
        config = {k: str(v) for k, v in topic["config"].items()}
        assert config.items() >= {k: str(v) for k, v in (spec.get("config") or {}).items()}.items()
        # Three replicas, two in sync: what the processes' durability check asks for.
        assert topic["replicas"] == 3 and int(topic["config"]["min.insync.replicas"]) == 2


def test_the_values_name_the_topics_as_the_settings_do() -> None:
    topics = {role: name for role, name in VALUES["topics"].items() if role != "replicas"}
    assert topics == {role: name for role, name in Settings().topics.model_dump().items() if role != "definitions"}


def test_the_kafka_users_hold_the_acl_recipe_and_nothing_more() -> None:
    expected = acls.strimzi_users(acls.recipe(Settings()))
    assert yaml.safe_load((CHART / "files" / "kafka-users.yaml").read_text()) == {"users": expected}, (
        "files/kafka-users.yaml is `pipeline topics acls --strimzi`"
    )
    users = {d["metadata"]["name"]: d["spec"] for r, d in STRIMZI if r == "gpu-secured" and d["kind"] == "KafkaUser"}
    assert {name: spec["authorization"]["acls"] for name, spec in users.items()} == expected
    assert all(spec["authentication"] == {"type": "scram-sha-512"} for spec in users.values())
    assert set(users) == {f"{VALUES['kafka']['userPrefix']}{component}" for component in acls.COMPONENTS}


@pytest.mark.parametrize(
    "name",
    [
        (w["kind"], w["metadata"]["name"])
        for r, w in ALL_DOCS
        if r == "gpu-secured" and w["kind"] in WORKLOADS | {"Job"}
    ],
    ids=lambda n: "/".join(n),
)
def test_each_process_connects_as_its_own_user_with_its_users_secret(name: tuple[str, str]) -> None:
    workload = find(*name, "gpu-secured")
    component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
    (container,) = containers(workload)
    if component == "triton":
        return
    env = container_env(workload, container, "gpu-secured")
    user = f"{VALUES['kafka']['userPrefix']}{USERS[component]}"
    assert env["PIPELINE_KAFKA__USERNAME"] == user and env["PIPELINE_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    password = volumes["kafka-password"]["secret"]
    assert password["secretName"] == user, "the Secret Strimzi's User Operator writes for the user"
    assert env["PIPELINE_KAFKA__PASSWORD_FILE"] == f"{mounts['kafka-password']}/{password['items'][0]['path']}"
    assert password["items"][0]["key"] == "password"
    ca = volumes["kafka-ca"]["secret"]
    assert ca["secretName"] == "prod-cluster-ca-cert"
    assert env["PIPELINE_KAFKA__SSL_CA_FILE"] == f"{mounts['kafka-ca']}/{ca['items'][0]['path']}"
    find("KafkaUser", user, "gpu-secured")


def test_no_secret_value_is_written_into_the_chart() -> None:
    for rendering, doc in ALL_DOCS:
        assert doc["kind"] != "Secret", "credentials come from Secrets made elsewhere (Strimzi, the operator)"
        if doc["kind"] in WORKLOADS | {"Job"}:
            for container in containers(doc):
                for entry in container.get("env", []):
                    if any(word in entry["name"] for word in ("PASSWORD", "API_KEYS")) and "_FILE" not in entry["name"]:
                        assert "value" not in entry, f"{doc_id((rendering, doc))}: {entry['name']}"
    gateway = find("Deployment", "pipeline-gateway", "gpu-secured")
    (keys,) = [e for e in containers(gateway)[0]["env"] if e["name"] == "PIPELINE_GATEWAY__API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"] == {"name": "pipeline-api-keys", "key": "api-keys"}


# ---------------------------------------------------------------------------------------------
# Triton, the set-up, budgets, policies


def test_triton_is_ready_on_its_health_route_and_takes_a_gpu_only_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for rendering, gpus in (("default", None), ("gpu-secured", 1)):
        triton = find("Deployment", "pipeline-triton", rendering)
        (container,) = containers(triton)
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert "--model-control-mode=explicit" in container["args"]
        assert container["resources"]["limits"].get("nvidia.com/gpu") == gpus
        image = container["image"]
        assert image.startswith("nvcr.io/nvidia/tritonserver:") == (gpus is not None)
        # The processes reach it through its Service, on the ports the settings name.
        worker = find("StatefulSet", "pipeline-worker", rendering)
        settings = settings_from(container_env(worker, containers(worker)[0], rendering), monkeypatch)
        service = find("Service", "pipeline-triton", rendering)
        for url, port in ((settings.triton.grpc_url, "grpc"), (settings.triton.http_url, "http")):
            host, number = url.rsplit(":", 1)
            assert host == service["metadata"]["name"]
            assert any(p["port"] == int(number) and p["targetPort"] == port for p in service["spec"]["ports"])
        job = find("Job", "pipeline-setup", rendering)
        script = containers(job)[0]["command"][-1]
        assert ("/opt/pipeline/triton_gpu" in script) == (gpus is not None)
        assert "pipeline models serve" in script
        assert ("pipeline topics apply" in script) == (rendering == "default"), "Strimzi's KafkaTopics instead"


def test_the_shared_volumes_are_claimed_and_the_feature_store_is_redis() -> None:
    for rendering in RENDERINGS:
        claims = {d["metadata"]["name"] for d in RENDERED[rendering] if d["kind"] == "PersistentVolumeClaim"}
        store = yaml.safe_load(find("ConfigMap", "pipeline-feast", rendering)["data"]["feature_store.yaml"])
        assert store["online_store"] == {"type": "redis", "connection_string": VALUES["feast"]["redis"]}
        shipped = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
        assert {k: v for k, v in store.items() if k != "online_store"} == {
            k: v for k, v in shipped.items() if k != "online_store"
        }
        for _, doc in ((r, d) for r, d in ALL_DOCS if r == rendering and d["kind"] in WORKLOADS | {"Job"}):
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_every_workload_has_resources_and_a_disruption_budget_over_its_pods() -> None:
    for rendering in RENDERINGS:
        budgets = [d for d in RENDERED[rendering] if d["kind"] == "PodDisruptionBudget"]
        for workload in (d for d in RENDERED[rendering] if d["kind"] in WORKLOADS):
            for container in containers(workload):
                assert {"requests", "limits"} <= set(container["resources"]), workload["metadata"]["name"]
            if workload["metadata"]["name"] == "pipeline-scaler":
                continue  # one replica, recreated: a budget would only block a drain
            labels = workload["spec"]["template"]["metadata"]["labels"].items()
            covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels]
            assert len(covering) == 1, f"{rendering}: {workload['metadata']['name']}"


def _admits(policy: dict[str, Any], port: int, source_labels: dict[str, str]) -> bool:
    for rule in policy["spec"].get("ingress", []):
        if port not in {p["port"] for p in rule.get("ports", [])}:
            continue
        peers = rule.get("from")
        if not peers or any(
            p.get("podSelector", {}).get("matchLabels", {}).items() <= source_labels.items()
            for p in peers
            if "podSelector" in p
        ):
            return True
    return False


def test_network_policies_deny_by_default_and_admit_what_the_pipeline_needs() -> None:
    policies = [d for d in RENDERED["default"] if d["kind"] == "NetworkPolicy"]
    deny = find("NetworkPolicy", "pipeline-default-deny")
    pods = [d for d in RENDERED["default"] if d["kind"] in WORKLOADS]
    for workload in pods:  # every pod is under the default deny
        assert (
            deny["spec"]["podSelector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        )
    assert "ingress" not in deny["spec"]

    def admitted(target: str, port: int, source: str) -> bool:
        pod = find("StatefulSet" if "worker" in target else "Deployment", target)["spec"]["template"]["metadata"][
            "labels"
        ]
        src = find("StatefulSet" if "worker" in source else "Deployment", source)["spec"]["template"]["metadata"][
            "labels"
        ]
        return any(
            p["spec"]["podSelector"]["matchLabels"].items() <= pod.items() and _admits(p, port, src) for p in policies
        )

    values = VALUES
    assert admitted("pipeline-gateway", values["gateway"]["answerPort"], "pipeline-worker"), "workers answer the bridge"
    assert admitted("pipeline-gateway", values["gateway"]["port"], "pipeline-fraud-consumer"), (
        "callers reach the bridge"
    )
    assert admitted("pipeline-triton", 8001, "pipeline-worker") and admitted(
        "pipeline-triton", 8001, "pipeline-backfill-worker"
    )
    assert not admitted("pipeline-gateway", values["gateway"]["answerPort"], "pipeline-fraud-consumer")
    assert not admitted("pipeline-scaler", values["scaler"]["port"], "pipeline-worker"), "only KEDA asks the policy"


def test_the_bridge_autoscaler_fits_the_replies_partitions() -> None:
    hpa = find("HorizontalPodAutoscaler", "pipeline-gateway")
    assert hpa["spec"]["maxReplicas"] <= partitions("replies"), "one replies partition per bridge"
    target = hpa["spec"]["scaleTargetRef"]
    gateway = find(target["kind"], target["name"])
    assert "replicas" not in gateway["spec"], "the autoscaler owns the count"
