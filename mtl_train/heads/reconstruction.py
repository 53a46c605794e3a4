"""Reconstruction head: a dense decoder back to the input's shape (denoising / autoencoding).

The decoder is :class:`~mtl_train.heads.dense.DenseHead` with one output per input channel, plus an optional
sigmoid for targets known to lie in [0, 1] (images).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.heads.dense import DenseHead


class ReconstructionHead(nn.Module):
    """Reconstruction ``(B, out_channels, *input_size)``; ``activation`` is ``"none"`` or ``"sigmoid"``."""

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int,
        out_channels: int,
        hidden: int = 32,
        upsample_stages: int = 2,
        activation: str = "none",
    ) -> None:
        super().__init__()
        if activation not in ("none", "sigmoid"):
            raise ConfigError(f"heads activation must be 'none' or 'sigmoid', got {activation!r}")
        self.decoder = DenseHead(in_channels, spatial_dims, out_channels, hidden, upsample_stages)
        self.activation = activation

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        out = self.decoder(features, input_size)
        return torch.sigmoid(out) if self.activation == "sigmoid" else out
