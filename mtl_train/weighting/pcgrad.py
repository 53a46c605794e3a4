"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.

For every task i, start from g_i^PC = g_i and, for j over the *other* tasks in a random order, if
g_i^PC . g_j < 0 remove the conflicting component along the *original* g_j:

    g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j.

The shared update is sum_i g_i^PC (``reduction = "sum"``, the paper's and LibMTL's; ``"mean"`` divides by k, as
Nash-MTL's ``reduction='mean'``). Task-specific parameters get their own gradients. No hyperparameters.

Computation (:func:`pcgrad_weights`, on the Gramian M = G G^T only): every g_i^PC is a linear combination
C[i] @ G of the original rows; a projection step is C[i, j] -= (C[i] @ M[:, j]) / M[j, j], so the whole procedure
runs on k x k matrices (all i in parallel, k - 1 rounds), and the update is (C.sum(0)) @ G. The returned weights
are C.sum(0) (divided by k for ``mean``). The reference code also visits j = i (a no-op while g_i^PC . g_i >= 0);
LibMTL does the same; we skip it, as the paper's Algorithm 1 does. Zero gradients are never projected on.

A task whose loss is exactly 0 (switched off by the training schedule) has a zero gradient, which no task is
projected on; it gets weight 0 and is left out of the sum (``mean`` divides by the number of active tasks).

Randomness: each step draws the k visiting orders from the module's own ``torch.Generator`` (CPU, seeded by
``seed``; the same orders on every device), whose state is checkpointed in ``state_dict()`` (extra state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian

REDUCTIONS = ("sum", "mean")


def random_orders(k: int, generator: torch.Generator | None = None) -> Tensor:
    """A ``(k, k - 1)`` CPU long tensor: row i is a uniformly random order of the tasks other than i."""
    keys = torch.rand(k, k, generator=generator)
    keys.fill_diagonal_(2.0)  # larger than every uniform key: i sorts last and is cut off
    return keys.argsort(dim=1)[:, : k - 1]


def pcgrad_coefficients(gram: Tensor, orders: Tensor) -> Tensor:
    """C (k x k) with g_i^PC = C[i] @ G, from the Gramian M and the visiting ``orders`` ((k, k-1), row i = the
    order in which task i is projected against the others)."""
    k = gram.shape[0]
    coefficients = torch.eye(k, dtype=gram.dtype, device=gram.device)
    squared_norms = gram.diagonal()
    rows = torch.arange(k, device=gram.device)
    for step in range(orders.shape[1]):
        j = orders[:, step]
        dots = (coefficients @ gram)[rows, j]  # g_i^PC . g_j for every i
        norms_j = squared_norms[j]
        conflict = (dots < 0) & (norms_j > 0)
        factor = torch.where(conflict, dots / torch.where(norms_j > 0, norms_j, torch.ones_like(norms_j)),
                             torch.zeros_like(dots))
        coefficients = coefficients.index_put((rows, j), -factor, accumulate=True)
    return coefficients


def pcgrad_weights(gram: Tensor, orders: Tensor, reduction: str = "sum", active: Tensor | None = None) -> Tensor:
    """The ``(k,)`` weights w with sum_i g_i^PC = w @ G over the ``active`` tasks (``(k,)`` bool, default all; the
    others get 0), divided by their count for ``reduction="mean"``."""
    if active is None:
        active = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    # an inactive task i has g_i^PC = g_i = 0 (row e_i of C), and no row is projected on it: its weight is set to 0
    weights = torch.where(active, pcgrad_coefficients(gram, orders).sum(0), 0.0)
    return weights / active.sum().clamp_min(1) if reduction == "mean" else weights


def pcgrad(grads: Tensor, generator: torch.Generator | None = None, reduction: str = "sum",
           active: Tensor | None = None) -> Aggregation:
    """PCGrad's update of the ``(k, d)`` gradients, with random orders drawn from ``generator``, over the ``active``
    tasks (default all)."""
    orders = random_orders(grads.shape[0], generator)
    if grads.device.type == "cuda":
        orders = orders.pin_memory().to(grads.device, non_blocking=True)
    weights = pcgrad_weights(gramian(grads), orders.to(grads.device), reduction, active)
    return weighted_sum(grads, weights.to(grads.dtype))


class PCGrad(GradientWeighting):
    """Projecting conflicting gradients (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], reduction: str = "sum", seed: int = 0, mode: str = "params",
                 jacobian: str = "auto", jacobian_chunk: int | None = None,
                 weight_ema: float = 0.0) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if reduction not in REDUCTIONS:
            raise ConfigError(f"weighting.reduction must be 'sum' or 'mean', got {reduction!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"weighting.seed must be an integer, got {seed!r}")
        self.reduction = reduction
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        return pcgrad(grads, self.generator, self.reduction, active_tasks(losses))

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
