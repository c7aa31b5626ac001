"""Triton Python-backend model: runs the TorchScript model beside this file (every model of the
repository: `anomaly_detector/1/model.py` is a link to this file).

Dynamic batching hands `execute` several requests at once; they are scored in one forward pass.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("torch_threads", "1")))
        on_gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        # TorchScript optimises a model over its first calls (54, 1.8, then 0.12 ms here): made before
        # the version is ready, they are not its first requests' latency (docs/model.md#versions-and-rollouts).
        width = int(config["input"][0]["dims"][0])
        with torch.inference_mode():
            for _ in range(3):
                self.model(torch.zeros(8, width, device=self.device))

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "FEATURES").as_numpy() for r in requests]
        with torch.inference_mode():
            batch = torch.from_numpy(np.concatenate(inputs).astype(np.float32, copy=False))
            scores = self.model(batch.to(self.device)).reshape(-1, 1).cpu().numpy().astype(np.float32)
        responses, start = [], 0
        for rows in inputs:
            chunk = scores[start : start + len(rows)]
            start += len(rows)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SCORE", chunk)]))
        return responses
