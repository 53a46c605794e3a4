"""Regression head: global average pooling, an MLP, and an affine output map to the target's units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class RegressionHead(nn.Module):
    """Predictions ``(B,)`` (or ``(B, num_outputs)``) as ``offset + scale * mlp(pool(features))``, from features
    ``(B, C, *spatial)`` (averaged over space) or ``(B, C)``.

    ``offset``/``scale`` put the network's unit-scale output in the target's units (e.g. 80 +- 30 bpm),
    so the loss is computed in those units without normalising the dataset.
    """

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int,
        num_outputs: int = 1,
        hidden: int = 64,
        offset: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.offset = offset
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_outputs))

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        pooled = features if features.dim() == 2 else torch.flatten(features, 2).mean(dim=2)
        out = self.offset + self.scale * self.mlp(pooled)
        return out.squeeze(1) if self.num_outputs == 1 else out
