"""Gradient-magnitude-proportional weighting: each task's gradient is weighted by its share of the total gradient
norm,

    w_i = ||g_i|| / sum_j ||g_j||,        d = sum_i w_i g_i,

so tasks with larger gradients get a larger say (the opposite of normalising every gradient to unit length).
There is no single canonical paper for this rule; it is a simple baseline in the family of gradient-magnitude
heuristics (compare GradNorm, Chen et al., ICML 2018, which instead *equalises* the weighted norms). The weights
sum to 1 (when every gradient is zero they are 1/k; the direction is then zero anyway). Only the norms
||g_i|| = sqrt(M_ii) of the Gramian M = G G^T are needed. No hyperparameters besides ``mode``; default
``mode="params"`` (gradients w.r.t. the shared parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian


def grad_norm_proportional_weights(gram: Tensor) -> Tensor:
    """w_i = ||g_i|| / sum_j ||g_j|| from the Gramian M (k x k) of the per-task gradients (1/k if all are zero)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    total = norms.sum()
    uniform = norms.new_full(norms.shape, 1.0 / norms.shape[0])
    return (norms / total.clamp_min(1e-300)).where(total > 0, uniform)


class GradNormProportional(GradientWeighting):
    """Weights proportional to the per-task gradient norms (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], mode: str = "params", jacobian: str = "auto") -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = grad_norm_proportional_weights(gramian(grads)).to(grads.dtype)
        return weighted_sum(grads, weights)
