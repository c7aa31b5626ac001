"""The fraud scorer network: raw features in, fraud probability out.

Input scaling is part of the TorchScript module, so clients (the worker, the monolith bench,
tests) send raw feature values and every caller scores identically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn


class FraudScorer(nn.Module):
    if TYPE_CHECKING:
        # The buffers (`register_buffer`): `nn.Module.__getattr__` says Tensor | Module. For type checkers
        # only: TorchScript reads class annotations, and cannot resolve postponed (string) ones.
        mean: torch.Tensor
        std: torch.Tensor
        log_columns: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, log_columns: torch.Tensor, hidden: int = 32):
        super().__init__()
        width = mean.shape[0]
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        # Heavy-tailed columns (amounts, distances) enter as log1p.
        self.register_buffer("log_columns", log_columns)
        self.net = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_columns, torch.log1p(torch.clamp(x, min=0.0)), x)
        return (x - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.scale(x)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))
