"""The Kubernetes manifests in deploy/k8s, checked offline against the schemas they must meet and
against the project's own settings and topics (docs/kubernetes.md#validation).

- Built-in kinds: kubernetes-validate's strict schemas (an unknown field fails), for each version
  in KUBERNETES_VERSIONS.
- KEDA ScaledObjects: the CRD's schema in deploy/schemas/keda, closed the same way, its CEL rule,
  and each trigger's metadata against KEDA's generated list of scaler parameters.
- Coherence: what one manifest names, another provides (Services, ports, the policy URL, the
  StatefulSet), the limits fit topics/topics.yaml, and every PIPELINE_* variable is one the
  settings accept.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.settings import PROJECT_ROOT, Settings

K8S = PROJECT_ROOT / "deploy" / "k8s"
KEDA_SCHEMAS = PROJECT_ROOT / "deploy" / "schemas" / "keda"
TOPICS = PROJECT_ROOT / "topics" / "topics.yaml"

# The oldest version the manifests target (the HPA `tolerance` field KEDA passes on appears in
# 1.33) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.33", "1.37")
# Kinds without a built-in schema; anything else must validate (an apiVersion typo must not skip).
NOT_BUILT_IN = {("keda.sh/v1alpha1", "ScaledObject"), ("kustomize.config.k8s.io/v1beta1", "Kustomization")}
WORKLOADS = {"Deployment", "StatefulSet"}
# What a fieldRef gives at run time, for checking the variables built from it.
FIELD_SAMPLES = {"status.podIP": "10.1.2.3", "metadata.namespace": "pipeline"}


# ---------------------------------------------------------------------------------------------
# Loading


def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in load(path):
            yield path, doc


def doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(K8S)}:{doc['kind']}/{doc.get('metadata', {}).get('name', '')}"


ALL_DOCS = list(documents())
BUILT_IN = [item for item in ALL_DOCS if (item[1]["apiVersion"], item[1]["kind"]) not in NOT_BUILT_IN]
SCALED_OBJECTS = [item for item in ALL_DOCS if item[1]["kind"] == "ScaledObject"]


def find(kind: str, name: str, path: Path | None = None) -> dict[str, Any]:
    """The one document of this kind and name (in `path` if given; else in the kustomization's files)."""
    pool = load(path) if path is not None else [doc for p in kustomized_files() for doc in load(p)]
    found = [doc for doc in pool if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def kustomized_files() -> list[Path]:
    return [K8S / name for name in load(K8S / "kustomization.yaml")[0]["resources"]]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def container_env(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps, then env in order, with
    fieldRefs replaced by sample values and $(VAR) expanded from the variables defined before."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]
        config = find("ConfigMap", ref["name"])
        env.update({source.get("prefix", "") + k: str(v) for k, v in config.get("data", {}).items()})
    pod_name = workload["metadata"]["name"] + ("-0" if workload["kind"] == "StatefulSet" else "-7c9d8f6b5-x2x4q")
    for entry in container.get("env", []):
        if "valueFrom" in entry:
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


def test_only_keda_and_kustomize_kinds_go_without_a_built_in_schema() -> None:
    # Every other document is validated above, where a kind without a schema (a misspelt
    # apiVersion, say) fails with SchemaNotFoundError instead of being skipped.
    assert {(doc["apiVersion"], doc["kind"]) for _, doc in ALL_DOCS} & NOT_BUILT_IN == NOT_BUILT_IN
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_built_in({**find("Service", "pipeline-worker"), "apiVersion": "core/v1"}, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize("item", SCALED_OBJECTS, ids=doc_id)
def test_scaled_objects_validate_against_keda(item: tuple[Path, dict[str, Any]]) -> None:
    validate_scaled_object(item[1])


def test_a_misspelt_field_fails_strict_validation() -> None:
    worker = copy.deepcopy(find("StatefulSet", "pipeline-worker"))
    worker["spec"]["replica"] = worker["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
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
    kafka = copy.deepcopy(find("ScaledObject", "pipeline-worker", K8S / "kafka-scaler" / "scaledobject.yaml"))
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
# The kustomization


def test_the_kustomization_lists_exactly_the_files_beside_it() -> None:
    kustomization = load(K8S / "kustomization.yaml")[0]
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    assert kustomization["namespace"] == "pipeline"


def test_every_namespaced_object_is_in_the_pipeline_namespace() -> None:
    for path, doc in ALL_DOCS:
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"].get("namespace") == "pipeline", doc_id((path, doc))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_kustomization_builds() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(built) if d)
    expected = sorted((d["kind"], d["metadata"]["name"]) for p in kustomized_files() for d in load(p))
    assert kinds == expected


# ---------------------------------------------------------------------------------------------
# Coherence


def test_services_select_pods_and_reach_their_ports() -> None:
    workloads = [doc for p in kustomized_files() for doc in load(p) if doc["kind"] in WORKLOADS]
    for service in (doc for p in kustomized_files() for doc in load(p) if doc["kind"] == "Service"):
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
    workloads = [doc for p in kustomized_files() for doc in load(p) if doc["kind"] in WORKLOADS]
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
    # Each instance claims one replies partition.
    assert gateway["spec"]["replicas"] <= partitions("replies")


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
    kafka = find("ScaledObject", "pipeline-worker", K8S / "kafka-scaler" / "scaledobject.yaml")
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
    [(w["kind"], w["metadata"]["name"]) for p in kustomized_files() for w in load(p) if w["kind"] in WORKLOADS],
    ids=lambda n: "/".join(n),
)
def test_every_pipeline_variable_is_a_setting(name: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each PIPELINE_* variable a container gets names a field of the settings (the nested blocks
    refuse unknown fields; an unknown top-level name would be ignored, so it is looked up here) and
    its value is accepted."""
    workload = find(*name)
    for container in containers(workload):
        env = pipeline_env(container_env(workload, container))
        assert env, "no PIPELINE_* settings"
        for value in env.values():
            assert "$(" not in value, f"unexpanded reference in {value!r}"
        settings = settings_from(env, monkeypatch)
        for variable in env:
            node: Any = settings
            for part in variable.removeprefix("PIPELINE_").lower().split("__"):
                assert part in type(node).model_fields, f"{variable}: no setting {part!r}"
                node = getattr(node, part)
