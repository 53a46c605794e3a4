"""Classification head: global average pooling, then a two-layer MLP giving class logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ClassificationHead(nn.Module):
    """Logits ``(B, num_classes)`` from features ``(B, C, *spatial)`` (averaged over space) or ``(B, C)``.

    With ``hidden=50, dropout=0.5`` on MultiLeNet features it is Sener & Koltun's (NeurIPS 2018) task head:
    Linear(50, 50), ReLU, dropout, Linear(50, 10).
    """

    def __init__(self, in_channels: int, spatial_dims: int, num_classes: int, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        pooled = features if features.dim() == 2 else torch.flatten(features, 2).mean(dim=2)
        return self.mlp(pooled)
