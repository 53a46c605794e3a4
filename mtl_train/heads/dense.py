"""Dense head: one prediction per input sample/pixel (semantic segmentation of images or signals).

Features are projected, upsampled (linear / bilinear) to the input's size, refined by a 3-wide convolution and
mapped to ``num_outputs`` channels, the light "FCN-style" decoder of Long et al., CVPR 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_MODE = {1: "linear", 2: "bilinear"}


class DenseHead(nn.Module):
    """Outputs ``(B, num_outputs, *input_size)`` from features ``(B, C, *spatial)``."""

    def __init__(self, in_channels: int, spatial_dims: int, num_outputs: int, hidden: int = 32) -> None:
        super().__init__()
        conv = _CONV[spatial_dims]
        self.mode = _MODE[spatial_dims]
        self.project = nn.Sequential(conv(in_channels, hidden, 1), nn.ReLU(inplace=True))
        self.refine = nn.Sequential(conv(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True), conv(hidden, num_outputs, 1))

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        x = F.interpolate(self.project(features), size=tuple(input_size), mode=self.mode, align_corners=False)
        return self.refine(x)
