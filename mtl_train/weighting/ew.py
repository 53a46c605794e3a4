"""Equal weighting (EW), a.k.a. unitary scalarisation: L = sum_t L_t.

Kurin et al., "In Defense of the Unitary Scalarization for Deep Multi-Task Learning", NeurIPS 2022.
We sum (weight 1 per task), as Kurin et al., LibMTL and Nash-MTL's ``ls`` do; Sener's "uniform scaling" divides by
the task count, which is ``weighting=static`` with weights 1/k (the same up to the learning rate). A task whose loss
is exactly 0 (switched off by the training schedule) gets weight 0.
"""

from __future__ import annotations

from torch import Tensor

from mtl_train.weighting.base import StepContext, Weighting, active_tasks


class EqualWeighting(Weighting):
    """Every active task loss with weight 1."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        ctx.scale(losses.sum()).backward()
        return active_tasks(losses).to(losses.dtype)
