"""The multi-task model: a backbone (hard, soft, cross-stitch or mixture-of-experts sharing) plus one head per task."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from mtl_train.backbones.base import Backbone


class MultiTaskModel(nn.Module):
    """``forward(x) -> {task: output}``; names its shared parameters and its shared representation.

    ``encode`` gives the representation z (the trunk's output); ``decode`` maps z to every task's output
    through that task's own blocks and head. Methods that need per-task gradients use
    :meth:`shared_parameters` (gradients w.r.t. the parameters all tasks depend on) or z (the "-UB" / rep-grad
    variants, Sener & Koltun, NeurIPS 2018), whatever the backbone's sharing scheme.
    """

    def __init__(self, backbone: Backbone, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))
        self.task_names = list(heads)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone.encode(x)

    def decode(self, z: Tensor, x: Tensor) -> dict[str, Tensor]:
        """Every task's output from z; ``x`` is the input batch z came from (its spatial size sizes dense outputs)."""
        return {task: head(self.backbone.branch(task, z, x), x.shape[2:]) for task, head in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x), x)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's output depends on (the backbone's shared part)."""
        return self.backbone.shared_parameters()

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task`` depends on (its own backbone part and head)."""
        return [*self.backbone.task_parameters(task), *self.heads[task].parameters()]

    def last_shared_layer(self) -> nn.Module:
        """The last layer of the shared part that holds a weight matrix (GradNorm's W, Chen et al. 2018)."""
        return self.backbone.last_shared_layer()

    def penalty(self) -> Tensor | None:
        """The backbone's own loss term (soft sharing's L2 distance between towers), or None."""
        return self.backbone.penalty()
