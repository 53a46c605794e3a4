"""Dense head: one prediction per input sample/pixel (semantic segmentation of images or signals).

A light FCN-style decoder (Long et al., CVPR 2015): a 1x1 projection, ``upsample_stages`` rounds of
(x2 linear/bilinear upsampling -> 3-wide convolution -> ReLU), a final resize to the input's size and a 1x1
classifier. Each stage restores detail the trunk's pooling removed; set the stage count to about
log2 of the trunk's total downsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtl_train.errors import ConfigError

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_MODE = {1: "linear", 2: "bilinear"}


class DenseHead(nn.Module):
    """Outputs ``(B, num_outputs, *input_size)`` from features ``(B, C, *spatial)``."""

    def __init__(
        self, in_channels: int, spatial_dims: int, num_outputs: int, hidden: int = 32, upsample_stages: int = 2
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ConfigError(
                f"dense and reconstruction heads predict per sample/pixel and need spatial features (spatial_dims 1 or "
                f"2), but the backbone gives spatial_dims={spatial_dims} (0: flat feature vectors, e.g. "
                "backbone=multi_lenet, mlp or mmoe_mlp); use a convolutional backbone, or only classification and "
                "regression heads"
            )
        if upsample_stages < 0:
            raise ConfigError(f"head upsample_stages must be >= 0, got {upsample_stages}")
        conv = _CONV[spatial_dims]
        self.mode = _MODE[spatial_dims]
        self.project = nn.Sequential(conv(in_channels, hidden, 1), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(
            nn.Sequential(conv(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True)) for _ in range(upsample_stages)
        )
        self.classify = conv(hidden, num_outputs, 1)

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        x = self.project(features)
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False))
        if tuple(x.shape[2:]) != tuple(input_size):
            x = F.interpolate(x, size=tuple(input_size), mode=self.mode, align_corners=False)
        return self.classify(x)
