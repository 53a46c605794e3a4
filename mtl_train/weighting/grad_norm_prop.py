"""Gradient-magnitude-proportional weighting: each task's gradient is weighted by its share of the total gradient
norm,

    w_i = ||g_i|| / sum_j ||g_j||,        d = sum_i w_i g_i,

so tasks with larger gradients get a larger say (the opposite of normalising every gradient to unit length).
There is no single canonical paper for this rule; it is a simple baseline in the family of gradient-magnitude
heuristics (compare GradNorm, Chen et al., ICML 2018, which instead *equalises* the weighted norms). The weights
sum to 1 (when every gradient is zero they are 1/k; the direction is then zero anyway). Only the norms
||g_i|| = sqrt(M_ii) of the Gramian M = G G^T are needed. No hyperparameters besides ``mode``; default
``mode="params"`` (gradients w.r.t. the shared parameters).

A task whose loss is exactly 0 (switched off by the training schedule) gets weight 0 and the sums run over the
active tasks only (with every active gradient zero, each active task gets 1 / their count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian


def grad_norm_proportional_weights(gram: Tensor, active: Tensor | None = None) -> Tensor:
    """w_i = ||g_i|| / sum_j ||g_j|| from the Gramian M (k x k) of the per-task gradients, over the ``active`` tasks
    (``(k,)`` bool, default all; the others get 0); 1 / (their count) each if all their gradients are zero."""
    if active is None:
        active = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    norms = torch.where(active, gram.diagonal().clamp_min(0).sqrt(), 0.0)
    total = norms.sum()
    uniform = active.to(norms.dtype) / active.sum().clamp_min(1)
    return (norms / total.clamp_min(1e-300)).where(total > 0, uniform)


class GradNormProportional(GradientWeighting):
    """Weights proportional to the per-task gradient norms (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], mode: str = "params", jacobian: str = "auto",
                 jacobian_chunk: int | None = None, weight_ema: float = 0.0) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = grad_norm_proportional_weights(gramian(grads), active_tasks(losses)).to(grads.dtype)
        return weighted_sum(grads, weights)
