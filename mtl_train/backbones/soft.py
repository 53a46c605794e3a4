"""Soft parameter sharing: one CNN tower per task, tied by an L2 penalty between the towers' parameters.

Duong, Cohn, Bird & Cook, "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a Neural Network
Parser", ACL 2015. Every task has its own network; the loss gains

    penalty = strength * sum_{layers l} sum_{task pairs a < b} ||theta_a^(l) - theta_b^(l)||_2^2

over corresponding parameters (convolution kernels and BatchNorm affine parameters; running statistics are
buffers, not parameters), so the towers may differ where the tasks need it but are pulled towards each other
everywhere else. Its gradient w.r.t. tower a is ``2 * strength * sum_{b != a} (theta_a - theta_b)``. The trainer
adds it to the loss after the weighting method's backward and logs it as the ``soft_l2`` column of
``losses.csv``. Each tower is the conv_block stack of :func:`mtl_train.backbones.cnn.hard_cnn`, and the towers are
initialised independently (each draws its own random weights, as separate per-task networks do), so the penalty
starts high and decreases as training ties the towers together.

Default ``strength`` 1e-2: with independent default initialisation the penalty of the cnn1d-sized towers starts
at about 1.2 (each conv kernel of fan-in f contributes 2 * out_channels * f * 1/(3f)), the order of the task
losses at initialisation, so neither the tie nor the tasks dominate the first steps; 1e-3 makes it negligible,
1e-1 all but forces hard sharing.

Shared and task parameters. The representation z is per task (``encode`` stacks the k tower outputs,
``shares_representation = False``, so ``weighting.mode=rep`` is refused). :meth:`SoftSharingBackbone.shared_parameters`
returns every tower's parameters: they are the parameters the penalty couples, and it keeps gradient methods in
``mode=params`` meaningful. Task t's gradient is zero outside tower t, so the rows of their gradient matrix are
orthogonal: PCGrad and GradVac find no conflict (they reduce to the plain sum), and MGDA, CAGrad, IMTL, Nash-MTL
and Aligned-MTL rescale whole towers relative to each other, which is what they do with independent parameters.
:meth:`SoftSharingBackbone.task_parameters` is then empty (the heads remain task-specific). GradNorm's W
(:meth:`SoftSharingBackbone.last_shared_layer`) is the last convolution of every tower together: the norm of
task t's gradient over it is the norm over tower t's own last convolution.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.backbones.cnn import conv_blocks
from mtl_train.errors import ConfigError


class SoftSharingBackbone(Backbone):
    """One conv tower per task plus the L2 penalty between towers (see the module docstring)."""

    penalty_name = "soft_l2"
    shares_representation = False

    def __init__(
        self,
        task_names: Sequence[str],
        in_channels: int,
        input_size: Sequence[int],
        spatial_dims: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        first_stride: int = 1,
        strength: float = 1e-2,
    ) -> None:
        super().__init__()
        if not strength >= 0:
            raise ConfigError(f"backbone.strength must be >= 0 (0 trains independent towers), got {strength}")
        self.task_names = list(task_names)
        self.strength = float(strength)
        self.out_channels = channels[-1]
        self.spatial_dims = spatial_dims
        self.towers = nn.ModuleList(
            nn.Sequential(*conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride))
            for _ in self.task_names
        )

    def encode(self, x: Tensor) -> Tensor:
        """The k tower outputs stacked: ``(k, B, C, *spatial)``, in the order of ``task_names``."""
        return torch.stack([tower(x) for tower in self.towers])

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """``task``'s own tower output."""
        return z[self.task_names.index(task)]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every tower's parameters (the ones the penalty couples; task t's gradient is zero outside tower t)."""
        return list(self.towers.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []

    def last_shared_layer(self) -> nn.Module:
        """The last convolution of every tower."""
        return nn.ModuleList(last_weighted_layer(tower) for tower in self.towers)

    def penalty(self) -> Tensor:
        """``strength * sum over task pairs a < b and parameters of ||theta_a - theta_b||^2``."""
        towers = [list(tower.parameters()) for tower in self.towers]
        distance = towers[0][0].new_zeros(())
        for params_a, params_b in itertools.combinations(towers, 2):
            for a, b in zip(params_a, params_b):
                distance = distance + (a - b).pow(2).sum()
        return self.strength * distance
