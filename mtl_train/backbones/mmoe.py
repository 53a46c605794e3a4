"""Multi-gate Mixture-of-Experts (MMoE): shared CNN experts, mixed per task by an input-dependent softmax gate.

Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018. With n experts f_i and one gate per task k,

    features_k(x) = sum_{i=1}^{n} g_k(x)_i * f_i(x),        g_k(x) = softmax(W_k flatten(x) + b_k)

and task k's head reads features_k. Each expert is the conv_block stack of :func:`mtl_train.backbones.cnn.hard_cnn`;
each gate is LibMTL's: one linear layer from the flattened input to n logits, then a softmax over experts.

Shared and task parameters: every task reads every expert, so the experts are
:meth:`MMoEBackbone.shared_parameters`; the gate of task k is ``task_parameters(k)``. The representation z is the
experts' outputs stacked, ``(B, n, C, *spatial)``: one tensor all tasks read (``shares_representation = True``),
so ``weighting.mode=rep`` takes per-task gradients w.r.t. it. GradNorm's W
(:meth:`MMoEBackbone.last_shared_layer`) is the last convolution of every expert together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.backbones.cnn import conv_blocks
from mtl_train.errors import ConfigError


class MMoEBackbone(Backbone):
    """``num_experts`` shared conv experts and one softmax gate per task (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        in_channels: int,
        input_size: Sequence[int],
        spatial_dims: int,
        num_experts: int = 4,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        first_stride: int = 1,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ConfigError(f"backbone.num_experts must be >= 1, got {num_experts}")
        self.out_channels = channels[-1]
        self.spatial_dims = spatial_dims
        self.experts = nn.ModuleList(
            nn.Sequential(*conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride))
            for _ in range(num_experts)
        )
        input_features = in_channels * math.prod(input_size)
        self.gates = nn.ModuleDict({task: nn.Linear(input_features, num_experts) for task in task_names})

    def gate_weights(self, task: str, x: Tensor) -> Tensor:
        """``task``'s gate g_k(x): ``(B, num_experts)``, each row on the simplex."""
        return torch.softmax(self.gates[task](torch.flatten(x, 1)), dim=1)

    def encode(self, x: Tensor) -> Tensor:
        """The experts' outputs stacked: ``(B, num_experts, C, *spatial)``."""
        return torch.stack([expert(x) for expert in self.experts], dim=1)

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """``sum_i g_task(x)_i * z[:, i]``: ``(B, C, *spatial)``."""
        return torch.einsum("bn,bn...->b...", self.gate_weights(task, x), z)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' parameters."""
        return list(self.experts.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s gate."""
        return list(self.gates[task].parameters())

    def last_shared_layer(self) -> nn.Module:
        """The last convolution of every expert."""
        return nn.ModuleList(last_weighted_layer(expert) for expert in self.experts)
