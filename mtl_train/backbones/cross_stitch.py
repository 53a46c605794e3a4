"""Cross-stitch networks: one CNN tower per task, whose activations are mixed by learned units after chosen blocks.

Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016. After block l
the k task activations x_1..x_k (each ``(B, C, *spatial)``) become

    x~_t[:, c] = sum_j alpha_{t, j, c} * x_j[:, c]          (alpha: a learned ``(k, k, C)`` tensor per unit)

i.e. one k x k mixing matrix per channel (the per-channel variant, as in Vandenhende et al.'s configs).
Initialisation: ``alpha_same`` on the diagonal and ``alpha_diff`` elsewhere; the defaults 0.9 and 0.1 / (k - 1)
make every row sum to 1 and are (0.9, 0.1) for k = 2, Vandenhende et al.'s NYUD setting and reportedly the one
Misra's ablation favoured. The alphas train with the model's optimizer and learning rate (Misra reportedly used a
larger one for them; not reproduced here). Each tower is the conv_block stack of
:func:`mtl_train.backbones.cnn.hard_cnn`; ``stitch_after`` lists the (0-based) blocks followed by a unit, every
block by default.

Shared and task parameters: task t's output depends on every tower up to the last unit and on every unit, so
those are :meth:`CrossStitchBackbone.shared_parameters`; tower t's blocks after the last unit (none by default)
are ``task_parameters(t)``, run by ``branch`` as hard sharing runs its task blocks. The representation z is the k
activations after the last unit, stacked; it is per task (``shares_representation = False``, so
``weighting.mode=rep`` is refused). GradNorm's W (:meth:`CrossStitchBackbone.last_shared_layer`) is the last
convolution of every tower before the last unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.backbones.cnn import conv_blocks
from mtl_train.errors import ConfigError


class CrossStitchUnit(nn.Module):
    """``out[t] = sum_j alpha[t, j, c] * x[j]`` per channel c, for stacked activations ``x`` of shape
    ``(k, B, C, *spatial)``."""

    def __init__(self, num_tasks: int, channels: int, alpha_same: float, alpha_diff: float) -> None:
        super().__init__()
        eye = torch.eye(num_tasks).unsqueeze(-1).expand(num_tasks, num_tasks, channels)
        self.alpha = nn.Parameter(alpha_diff + (alpha_same - alpha_diff) * eye)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("tjc,jbc...->tbc...", self.alpha, x)


class CrossStitchBackbone(Backbone):
    """k conv towers mixed by cross-stitch units (see the module docstring)."""

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
        stitch_after: Sequence[int] | None = None,
        alpha_same: float = 0.9,
        alpha_diff: float | None = None,
    ) -> None:
        super().__init__()
        self.task_names = list(task_names)
        k = len(self.task_names)
        self.stitch_after = sorted(set(range(len(channels)) if stitch_after is None else stitch_after))
        if not self.stitch_after or not all(0 <= i < len(channels) for i in self.stitch_after):
            raise ConfigError(
                f"backbone.stitch_after must list block indices in [0, {len(channels) - 1}] (null = every block), "
                f"got {stitch_after}; without a unit the towers are independent networks"
            )
        if alpha_diff is None:
            alpha_diff = (1.0 - alpha_same) / (k - 1) if k > 1 else 0.0
        self.out_channels = channels[-1]
        self.spatial_dims = spatial_dims
        self.towers = nn.ModuleList(
            nn.Sequential(*conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride))
            for _ in self.task_names
        )
        self.units = nn.ModuleDict(
            {str(i): CrossStitchUnit(k, channels[i], alpha_same, alpha_diff) for i in self.stitch_after}
        )

    def encode(self, x: Tensor) -> Tensor:
        """The k towers' activations after the last unit, stacked: ``(k, B, C, *spatial)`` in the order of
        ``task_names``."""
        h = [x] * len(self.towers)
        for i in range(self.stitch_after[-1] + 1):
            h = torch.stack([tower[i](h_t) for tower, h_t in zip(self.towers, h)])
            if str(i) in self.units:
                h = self.units[str(i)](h)
        return h

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """``task``'s own activation after the last unit, through its tower's remaining blocks (none by default)."""
        index = self.task_names.index(task)
        return self.towers[index][self.stitch_after[-1] + 1:](z[index])

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every tower's blocks up to the last unit, and every unit's alphas."""
        last = self.stitch_after[-1]
        towers = [p for tower in self.towers for block in tower[:last + 1] for p in block.parameters()]
        return towers + list(self.units.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s tower blocks after the last unit (none when a unit follows the last block)."""
        tower = self.towers[self.task_names.index(task)]
        return [p for block in tower[self.stitch_after[-1] + 1:] for p in block.parameters()]

    def last_shared_layer(self) -> nn.Module:
        """The last convolution before the last unit, in every tower."""
        last = self.stitch_after[-1]
        return nn.ModuleList(last_weighted_layer(tower[last]) for tower in self.towers)
