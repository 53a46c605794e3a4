"""The multi-task model: a hard-shared backbone plus one head per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from mtl_train.backbones.hard import HardSharedBackbone


class MultiTaskModel(nn.Module):
    """``forward(x) -> {task: output}``; names its shared parameters and its shared representation.

    ``encode`` gives the shared representation z (the trunk's output); ``decode`` maps z to every task's output
    through that task's own blocks and head. Methods that need per-task gradients use
    :meth:`shared_parameters` (gradients w.r.t. the trunk) or z (the "-UB" / rep-grad variants,
    Sener & Koltun, NeurIPS 2018).
    """

    def __init__(self, backbone: HardSharedBackbone, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))
        self.task_names = list(heads)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone.encode(x)

    def decode(self, z: Tensor, input_size: Sequence[int]) -> dict[str, Tensor]:
        """Every task's output from z; ``input_size`` is the spatial size of the input (for dense heads)."""
        return {task: head(self.backbone.branch(task, z), input_size) for task, head in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x), x.shape[2:])

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's output depends on (the shared trunk)."""
        return list(self.backbone.shared.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` depends on (its own blocks and head)."""
        return [*self.backbone.branches[task].parameters(), *self.heads[task].parameters()]

    def last_shared_layer(self) -> nn.Module:
        """The last layer of the shared trunk that holds parameters (GradNorm's W, Chen et al. 2018)."""
        return self.backbone.last_shared_layer()
