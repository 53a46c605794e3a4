"""Geometric Loss Strategy (GLS): Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.

The loss is the geometric mean of the task losses,

    L = (prod_t L_t)^(1/k),      so  dL/dL_t = L / (k L_t)

i.e. the gradient is sum_t (L / (k L_t)) grad L_t: scale-invariant (multiplying one loss by c multiplies L by
c^(1/k) but leaves the direction unchanged), like sum_t log L_t (Nash-MTL's ``scaleinvls``). Those derivatives
are the weights returned. No hyperparameters; LibMTL's ``GLS`` computes ``losses.prod() ** (1/k)``, we compute
exp(mean_t log L_t), which neither underflows nor overflows for many tasks or extreme losses.

A loss that is exactly 0 (a task switched off by the training schedule) would make the product 0 and the
gradient NaN; such tasks are left out (weight 0) and the geometric mean is taken over the others. Losses must
be non-negative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_train.weighting.base import StepContext, Weighting, active_tasks


def geometric_mean_loss(losses: Tensor) -> tuple[Tensor, Tensor]:
    """The geometric mean of the non-zero losses (differentiable) and the ``(k,)`` weights dL/dL_t (detached)."""
    active = active_tasks(losses)
    count = active.sum().clamp_min(1)
    log_losses = torch.where(active, torch.log(torch.where(active, losses, 1.0)), 0.0)
    total = torch.exp(log_losses.sum() / count)
    detached = losses.detach()
    weights = torch.where(active, total.detach() / (count * torch.where(active, detached, 1.0)), 0.0)
    return total, weights


class GeometricLossStrategy(Weighting):
    """The geometric mean of the task losses (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        total, weights = geometric_mean_loss(losses)
        ctx.scale(total).backward()
        return weights
