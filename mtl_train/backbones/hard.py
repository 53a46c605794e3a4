"""Hard parameter sharing with a configurable split depth (Caruana, "Multitask Learning", 1997).

A backbone is a stack of blocks. The first ``split_depth`` blocks form the shared trunk, whose output is the
*shared representation* z; the remaining blocks are copied once per task, so every task gets its own
task-specific layers between z and its head.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.errors import ConfigError


class HardSharedBackbone(Backbone):
    """Blocks ``[0, split_depth)`` shared by all tasks, blocks ``[split_depth, depth)`` copied per task."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        task_names: Sequence[str],
        split_depth: int,
        out_channels: int,
        spatial_dims: int,
    ) -> None:
        super().__init__()
        if not 1 <= split_depth <= len(blocks):
            raise ConfigError(
                f"backbone.split_depth must be between 1 and the number of blocks ({len(blocks)}), "
                f"got {split_depth}; 1 shares only the first block, {len(blocks)} shares the whole trunk"
            )
        self.split_depth = split_depth
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.shared = nn.Sequential(*blocks[:split_depth])
        task_blocks = list(blocks[split_depth:])
        self.branches = nn.ModuleDict(
            {name: nn.Sequential(*copy.deepcopy(task_blocks)) for name in task_names}
        )

    def encode(self, x: Tensor) -> Tensor:
        """The shared representation z."""
        return self.shared(x)

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """Task-specific features of ``task`` computed from z."""
        return self.branches[task](z)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.branches[task].parameters())

    def last_shared_layer(self) -> nn.Module:
        """The last convolution or linear layer of the shared trunk."""
        return last_weighted_layer(self.shared)
