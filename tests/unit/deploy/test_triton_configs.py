"""Every model configuration the project ships parses with Triton's own protobuf schema
(`model_config.proto`, from tritonclient), and each model's GPU configuration (deploy/triton/gpu/)
serves the same model with the same contract as the one the stack runs: the same parameters
(features, domains, labels), batch size, batching and input width; Triton's PyTorch backend on a GPU
instance, its tensors named by position, the model's one score per row presented as [1]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import json_format, text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2

from pipeline.models.anomaly_detector import AnomalyDetector
from pipeline.models.fraud_scorer import FraudScorer
from pipeline.models.spec import spec_from_config
from pipeline.settings import PROJECT_ROOT

SHIPPED = sorted(PROJECT_ROOT.glob("triton_models/*/config.pbtxt")) + sorted(
    PROJECT_ROOT.glob("deploy/triton/gpu/*/config.pbtxt")
)
MODELS = ("fraud_scorer", "anomaly_detector")


def parsed(path: Path) -> model_config_pb2.ModelConfig:
    """Strict: a field the schema does not know is an error."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_every_shipped_config_parses_with_tritons_schema():
    assert len(SHIPPED) == 2 * len(MODELS)
    for path in SHIPPED:
        config = parsed(path)
        assert config.name == path.parent.name, path
        assert config.max_batch_size > 0 and len(config.input) == 1 and len(config.output) == 1, path


def test_a_misspelt_field_is_refused_by_the_schema():
    with pytest.raises(text_format.ParseError, match="instance_grup"):
        text_format.Parse('name: "m"\ninstance_grup [ { count: 1 } ]', model_config_pb2.ModelConfig())


@pytest.mark.parametrize("model", MODELS)
def test_the_gpu_config_serves_the_same_contract_on_the_pytorch_backend(model):
    cpu = parsed(PROJECT_ROOT / "triton_models" / model / "config.pbtxt")
    gpu = parsed(PROJECT_ROOT / "deploy" / "triton" / "gpu" / model / "config.pbtxt")

    assert (cpu.backend, gpu.backend) == ("python", "pytorch")
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert dict(gpu.parameters) == dict(cpu.parameters)
    assert gpu.max_batch_size == cpu.max_batch_size and gpu.dynamic_batching == cpu.dynamic_batching
    assert gpu.version_policy == cpu.version_policy
    assert list(gpu.input[0].dims) == list(cpu.input[0].dims) and gpu.input[0].data_type == cpu.input[0].data_type
    assert (gpu.input[0].name, gpu.output[0].name) == ("INPUT__0", "OUTPUT__0")
    assert list(gpu.output[0].dims) == [1] and list(gpu.output[0].reshape.shape) == []
    # The worker reads either the same way: only the tensor names differ.
    specs = [spec_from_config(json_format.MessageToDict(c, preserving_proto_field_name=True)) for c in (cpu, gpu)]
    assert specs[0].request_features == specs[1].request_features and specs[0].domains == specs[1].domains
    assert (specs[1].input_name, specs[1].output_name) == ("INPUT__0", "OUTPUT__0")


@pytest.mark.parametrize("model", MODELS)
def test_the_torchscript_model_returns_one_score_per_row_as_the_reshape_says(model):
    width = parsed(PROJECT_ROOT / "deploy" / "triton" / "gpu" / model / "config.pbtxt").input[0].dims[0]
    if model == "fraud_scorer":
        module = FraudScorer(torch.zeros(width), torch.ones(width), torch.zeros(width, dtype=torch.bool))
    else:
        module = AnomalyDetector(load_column=4, hour_column=5, store_offset=6)
    scripted = torch.jit.script(module.eval())
    with torch.inference_mode():
        scores = scripted(torch.rand(7, width))
    assert scores.shape == (7,), "[batch]: no dimension of its own, shown as [1] by the reshape"
