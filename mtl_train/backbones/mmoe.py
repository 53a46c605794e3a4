"""Multi-gate Mixture-of-Experts (MMoE): shared experts, mixed per task by an input-dependent softmax gate.

Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018. With n experts f_i and one gate per task k,

    features_k(x) = sum_{i=1}^{n} g_k(x)_i * f_i(x),        g_k(x) = softmax(W_k flatten(x) + b_k)

and task k's head reads features_k. Each expert is the conv_block stack of :func:`mtl_train.backbones.cnn.hard_cnn`
(or an MLP, :func:`mmoe_mlp`); each gate is LibMTL's: one linear layer from the flattened input to n logits, then a
softmax over experts.

Shared and task parameters: every task reads every expert, so the experts are
:meth:`MixtureOfExperts.shared_parameters`; the gate of task k is ``task_parameters(k)``. The representation z is the
experts' outputs stacked, ``(B, n, C, *spatial)``: one tensor all tasks read (``shares_representation = True``),
so ``weighting.mode=rep`` takes per-task gradients w.r.t. it. GradNorm's W
(:meth:`MixtureOfExperts.last_shared_layer`) is the last convolution (linear layer) of every expert together.

:class:`MixtureOfExperts` holds the gating and takes any experts; :class:`MMoEBackbone` builds CNN experts for
signals and images, :func:`mmoe_mlp` MLP experts (:func:`mtl_train.backbones.mlp.mlp_layers`) for vector / tabular
inputs, the set-up of Ma et al.'s experiments, where z is ``(B, n, D)`` and every task reads a ``(B, D)`` vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.backbones.cnn import conv_blocks
from mtl_train.backbones.mlp import mlp_layers
from mtl_train.errors import ConfigError


class MixtureOfExperts(Backbone):
    """Shared ``experts`` and one softmax gate per task on the flattened input (see the module docstring).

    ``input_features`` is the size of the flattened input; ``out_channels``/``spatial_dims`` describe one expert's
    output, which every expert must share.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        task_names: Sequence[str],
        input_features: int,
        out_channels: int,
        spatial_dims: int,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.experts = nn.ModuleList(experts)
        self.gates = nn.ModuleDict({task: nn.Linear(input_features, len(experts)) for task in task_names})

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
        """The last convolution (linear layer for MLP experts) of every expert."""
        return nn.ModuleList(last_weighted_layer(expert) for expert in self.experts)


class MMoEBackbone(MixtureOfExperts):
    """``num_experts`` shared CNN experts (the blocks of :func:`~mtl_train.backbones.cnn.hard_cnn`) and one softmax
    gate per task."""

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
        experts = [
            nn.Sequential(*conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride))
            for _ in range(checked_num_experts(num_experts))
        ]
        super().__init__(experts, task_names, in_channels * math.prod(input_size), channels[-1], spatial_dims)


def mmoe_mlp(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    num_experts: int = 4,
    hidden: Sequence[int] = (64, 32),
    norm: str = "none",
    dropout: float = 0.0,
) -> MixtureOfExperts:
    """``num_experts`` shared MLP experts (:func:`~mtl_train.backbones.mlp.mlp_layers`, flat ``(B, hidden[-1])``
    outputs) and one softmax gate per task: MMoE for vector / tabular inputs (Ma et al., KDD 2018)."""
    experts = [nn.Sequential(*mlp_layers(in_channels, input_size, hidden, norm, dropout))
               for _ in range(checked_num_experts(num_experts))]
    return MixtureOfExperts(experts, task_names, in_channels * math.prod(input_size), hidden[-1], spatial_dims=0)


def checked_num_experts(num_experts: int) -> int:
    """``num_experts``, or a :class:`ConfigError` when it is below 1."""
    if num_experts < 1:
        raise ConfigError(f"backbone.num_experts must be >= 1, got {num_experts}")
    return num_experts
