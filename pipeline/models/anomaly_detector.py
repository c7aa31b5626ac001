"""The anomaly detector network: raw readings and the device's baselines in, an anomaly score out.

Each sensor's reading enters as its distance from the device's baseline in baseline spreads, beside
the load and the time of day (as a point on a circle); a small autoencoder reconstructs them, and the
score is the reconstruction error, each input's residual measured in its own residual spread on
normal training data. The module maps the error through the threshold chosen on validation data,
`error / (error + threshold)`, so that a score of 0.5 is the threshold and the model config keeps
0.5 whatever the training chose. Scaling is part of the TorchScript module, as for the fraud scorer:
callers send raw values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

SENSOR_COUNT = 4  # request columns 0..3 are the sensors; the store's columns are (mean, std) per sensor


class AnomalyDetector(nn.Module):
    if TYPE_CHECKING:
        # The buffers (`register_buffer`): `nn.Module.__getattr__` says Tensor | Module. For type checkers
        # only: TorchScript reads class annotations, and cannot resolve postponed (string) ones.
        residual_scale: torch.Tensor
        threshold: torch.Tensor

    def __init__(self, load_column: int, hour_column: int, store_offset: int, hidden: int = 24, code: int = 3):
        super().__init__()
        self.load_column, self.hour_column, self.store_offset = load_column, hour_column, store_offset
        self.sensors = SENSOR_COUNT  # an attribute: TorchScript reads no module globals
        width = SENSOR_COUNT + 3  # sensors' distances, load, hour (sin, cos)
        self.register_buffer("residual_scale", torch.ones(width))
        self.register_buffer("threshold", torch.tensor(1.0))
        self.net = nn.Sequential(
            nn.Linear(width, hidden),
            nn.Tanh(),
            nn.Linear(hidden, code),
            nn.Tanh(),
            nn.Linear(code, hidden),
            nn.Tanh(),
            nn.Linear(hidden, width),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The autoencoder's input for raw rows: request features, then the store's baselines."""
        sensors = x[:, : self.sensors]
        means = x[:, self.store_offset : self.store_offset + 2 * self.sensors : 2]
        spreads = x[:, self.store_offset + 1 : self.store_offset + 2 * self.sensors : 2].clamp(min=1e-3)
        angle = x[:, self.hour_column] * (2 * math.pi / 24)
        return torch.cat(
            [
                (sensors - means) / spreads,
                x[:, self.load_column : self.load_column + 1],
                torch.sin(angle).unsqueeze(-1),
                torch.cos(angle).unsqueeze(-1),
            ],
            dim=1,
        )

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(x)
        return (self.net(encoded) - encoded) / self.residual_scale

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared residual of the sensors, each in its own residual spread (the load and the hour
        are context: reconstructed, not judged)."""
        return self.residuals(x)[:, : self.sensors].pow(2).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        error = self.error(x)
        return error / (error + self.threshold)
