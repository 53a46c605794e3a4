"""The multi-task model: a backbone (hard, soft, cross-stitch or mixture-of-experts sharing) plus one head per task."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor, nn

from mtl_train.backbones.base import Backbone
from mtl_train.errors import ConfigError


class MultiTaskModel(nn.Module):
    """``forward(x) -> {task: output}``; names its shared parameters and its shared representation.

    ``encode`` gives the representation z (the trunk's output); ``decode`` maps z to every task's output
    through that task's own blocks and head. Methods that need per-task gradients use
    :meth:`shared_parameters` (gradients w.r.t. the parameters all tasks depend on) or z (the "-UB" / rep-grad
    variants, Sener & Koltun, NeurIPS 2018), whatever the backbone's sharing scheme. Those gradient methods
    update exactly the parameters these lists name, so the model checks at construction that the lists cover every
    parameter exactly once (:meth:`check_parameter_partition`).
    """

    def __init__(self, backbone: Backbone, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))
        self.task_names = list(heads)
        self.check_parameter_partition()

    def check_parameter_partition(self) -> None:
        """Raise a :class:`ConfigError` unless :meth:`shared_parameters` and every :meth:`task_parameters` together
        list each parameter of the model exactly once (compared by identity). A parameter left out would get no
        gradient from the gradient-based methods, one listed twice would get two, and one that is not the model's
        would be differentiated for nothing."""
        names = {id(p): name for name, p in self.named_parameters()}
        listed = [*self.shared_parameters(), *(p for task in self.task_names for p in self.task_parameters(task))]
        counts = Counter(id(p) for p in listed)
        problems = {
            "missing": [name for key, name in names.items() if key not in counts],
            "listed more than once": [names[key] for key, n in counts.items() if n > 1 and key in names],
            "not parameters of the model": [str(tuple(p.shape)) for p in listed if id(p) not in names],
        }
        found = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in problems.items() if items)
        if found:
            backbone = type(self.backbone).__name__
            raise ConfigError(
                f"backbone: {backbone}.shared_parameters() and task_parameters(task) for the tasks "
                f"{self.task_names} must list every model parameter exactly once ({found}); fix {backbone}'s "
                "parameter lists, or choose another backbone="
            )

    @contextmanager
    def frozen_normalization_statistics(self) -> Iterator[None]:
        """Within the block, normalisation layers that track running statistics (BatchNorm) still normalise a
        training-mode forward with the batch's own statistics, as in training, but leave ``running_mean``,
        ``running_var`` and ``num_batches_tracked`` as they are (their tracking is switched off for the block);
        an eval-mode forward keeps using the running statistics. For extra forwards that must not count as a
        training step's (FAMO's loss after the update)."""
        layers = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
        for layer in layers:
            layer.track_running_stats = False
        try:
            yield
        finally:
            for layer in layers:
                layer.track_running_stats = True

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
