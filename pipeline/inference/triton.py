"""Batch scoring on Triton over gRPC (async): model specs from the server, one infer call per batch."""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from pipeline.errors import InferenceFailed, InferenceUnavailable, UnknownModel
from pipeline.models.spec import ModelSpec, spec_from_config
from pipeline.settings import TritonSettings

# An infer call that failed with anything but a malformed request may succeed later: the server
# may be down, starting, overloaded, or (re)loading the model ("has no available versions").
# Retries are bounded by the worker's budget, after which requests are dead-lettered.
_PERMANENT = {"StatusCode.INVALID_ARGUMENT", "StatusCode.UNIMPLEMENTED"}
_UNKNOWN_MODEL_TTL_S = 5.0


class TritonScorer:
    def __init__(self, settings: TritonSettings) -> None:
        self._settings = settings
        self._client = grpcclient.InferenceServerClient(settings.grpc_url)
        self._specs: dict[str, ModelSpec] = {}
        self._unknown: dict[str, float] = {}

    async def spec(self, model: str) -> ModelSpec:
        """The served model's spec; UnknownModel when Triton serves no ready model of that name."""
        if (cached := self._specs.get(model)) is not None:
            return cached
        if time.monotonic() - self._unknown.get(model, -_UNKNOWN_MODEL_TTL_S) < _UNKNOWN_MODEL_TTL_S:
            raise UnknownModel(f"model {model!r} is not served")
        try:
            ready = await self._client.is_model_ready(model)
            if not ready and not await self._client.is_server_ready():
                raise InferenceUnavailable(f"Triton is not ready to say whether it serves {model!r}")
            config = await self._client.get_model_config(model, as_json=True) if ready else None
        except InferenceServerException as e:
            if str(e.status()) == "StatusCode.NOT_FOUND":
                ready, config = False, None
            else:
                raise _wrap(e, f"model config of {model!r}") from e
        if not ready or config is None:
            self._unknown[model] = time.monotonic()
            raise UnknownModel(f"model {model!r} is not served")
        spec = spec_from_config(config["config"])
        self._specs[model] = spec
        return spec

    async def score(self, spec: ModelSpec, matrix: np.ndarray, version: str = "") -> tuple[np.ndarray, str]:
        """Scores for each row by `version` ("": the one Triton chooses) and the version that gave them."""
        scores: list[np.ndarray] = []
        scored_by = ""
        for start in range(0, len(matrix), spec.max_batch_size):
            chunk = np.ascontiguousarray(matrix[start : start + spec.max_batch_size], dtype=np.float32)
            infer_input = grpcclient.InferInput(spec.input_name, list(chunk.shape), "FP32")
            infer_input.set_data_from_numpy(chunk)
            try:
                result = await self._client.infer(
                    spec.name,
                    [infer_input],
                    model_version=version,
                    outputs=[grpcclient.InferRequestedOutput(spec.output_name)],
                    client_timeout=self._settings.timeout_s,
                )
            except InferenceServerException as e:
                raise _wrap(e, f"infer on {spec.name!r}") from e
            output = result.as_numpy(spec.output_name)
            if output is None or len(output) != len(chunk):
                raise InferenceFailed(f"{spec.name}: expected {len(chunk)} scores, got an empty or short output")
            scores.append(output.reshape(-1))
            scored_by = result.get_response().model_version
        return np.concatenate(scores), scored_by

    async def close(self) -> None:
        await self._client.close()


def _wrap(error: InferenceServerException, what: str) -> InferenceFailed:
    message = f"{what}: {error.message()}"
    if str(error.status()) in _PERMANENT:
        return InferenceFailed(message)
    return InferenceUnavailable(message)
