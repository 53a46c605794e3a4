"""Static (fixed) weights: L = sum_t w_t L_t with per-task weights from the config.

Linear scalarisation with hand-chosen importances, e.g. ``{cls: 1.0, rec: 0.1}`` to keep an auxiliary
reconstruction task from dominating (the "grid search" baseline of Sener & Koltun, NeurIPS 2018). A task whose
loss is exactly 0 (switched off by the training schedule) gets weight 0; the others keep theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks


class StaticWeighting(Weighting):
    """Fixed weights: a mapping task -> weight (unnamed tasks get ``default_weight``), a list in task order, or
    None (every task gets ``default_weight``)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        default_weight: float = 1.0,
    ) -> None:
        super().__init__(task_names)
        values = self._weights_in_task_order(weights, default_weight)
        negative = {t: w for t, w in zip(self.task_names, values) if not w >= 0}
        if negative:
            raise ConfigError(f"weighting.weights must be >= 0, got {negative}")
        self.register_buffer("weights", torch.tensor(values))

    def _weights_in_task_order(self, weights: Mapping[str, float] | Sequence[float] | None, default: float) -> list[float]:
        if weights is None:
            return [float(default)] * self.num_tasks
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.task_names))
            if unknown:
                raise ConfigError(
                    f"weighting.weights names unknown tasks {unknown}; the tasks are {self.task_names}. "
                    f"Example: 'weighting.weights={{{','.join(f'{t}:1.0' for t in self.task_names)}}}'"
                )
            return [float(weights.get(t, default)) for t in self.task_names]
        if len(weights) != self.num_tasks:
            raise ConfigError(
                f"weighting.weights has {len(weights)} values but there are {self.num_tasks} tasks {self.task_names}; "
                "give one weight per task, in task order, or a mapping task -> weight"
            )
        return [float(w) for w in weights]

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = torch.where(active_tasks(losses), self.weights.to(losses.dtype), 0.0)
        ctx.scale((weights * losses).sum()).backward()
        return weights
