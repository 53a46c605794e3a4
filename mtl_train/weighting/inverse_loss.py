"""Inverse-loss weighting: every task loss is divided by its own (detached) current value.

    w_i = k * (1 / L_i) / sum_j (1 / L_j),        loss = sum_i w_i L_i  (w held constant)

so every task contributes the same weighted loss k / sum_j (1/L_j) (the harmonic mean of the losses), and
the gradient is sum_i w_i grad L_i: a task with a large loss gets a small weight. The weights sum to the task
count k, like EW's, so the overall step size stays comparable. Up to that normalisation the gradient is the one
of sum_i log L_i (Nash-MTL's ``scaleinvls``, the loss-scale part of DB-MTL), since grad log L_i = grad L_i / L_i.
No source fixes the scale; summing to k is our choice (it matches EW when all losses are equal).

Guards: losses below ``eps`` (default 1e-8) count as ``eps`` in 1/L. A loss that is exactly 0 (a task switched off
by the training schedule) gets weight 0 and is left out of the normalisation, which then makes the weights sum
to the number of active tasks (k when none is switched off). Losses must be non-negative.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, normalise_over_active


def inverse_loss_weights(losses: Tensor, eps: float = 1e-8) -> Tensor:
    """``(k,)`` weights proportional to 1/L_i over the non-zero losses, summing to their count; 0 for zero losses."""
    losses = losses.detach()
    active = active_tasks(losses)
    return normalise_over_active(1.0 / losses.clamp_min(eps), active)


class InverseLossWeighting(Weighting):
    """Weights proportional to 1/L_i, summing to k (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8) -> None:
        super().__init__(task_names)
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0, got {eps}")
        self.eps = float(eps)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = inverse_loss_weights(losses, self.eps)
        ctx.scale((weights * losses).sum()).backward()
        return weights
