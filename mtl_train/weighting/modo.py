"""MoDo (Multi-objective gradient with Double sampling): Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in
Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023 (extended in JMLR 25,
2024; arXiv 2305.20057).

The weights lambda (on the simplex) take one projected gradient step per training step on
1/2 ||G^T lambda||^2 + rho/2 ||lambda||^2, whose gradient G G^T lambda + rho lambda is estimated without bias from
two independent gradient matrices G_1, G_2 (double sampling); the update is lambda @ G_3 of a third sample:

    lambda <- Proj_simplex(lambda - gamma (G_1 G_2^T lambda + rho lambda)),        d = lambda @ G_3.

lambda starts at 1/k and persists across steps (checkpointed). Projection: the sort-and-threshold Euclidean
projection onto the simplex (:func:`project_onto_simplex`), on the device, without host synchronisation.

Samples (``sampling``, :class:`~mtl_train.weighting.gradient_based.SubBatchGradientWeighting`): the trainer draws
one batch per step, so the independent samples are disjoint parts of it. ``three`` (default) follows the paper's
algorithm (and LibMTL, which draws three batches per step: its batch size B corresponds to
``trainer.batch_size`` = 3B here); ``two`` follows the authors' code (Trade-Off-MOL, ``MoDo.py``), which updates
with both batches' gradients (their sum, "averaging via lr"; here their mean, the whole batch's gradient);
``one`` uses G G^T of the whole batch (biased).

Defaults and sources: gamma = 0.1 as in the authors' code and torchjd's ``MoDoWeighting`` (LibMTL: 1e-3, which
keeps lambda close to uniform); rho = 0.1 (all agree). Like LibMTL's implementation, the heads get the gradient of
their own loss over the whole batch.

``mode=rep``: the rows are the per-sample gradients w.r.t. z, and G_1 G_2^T pairs sample i of one part with sample i
of the other (parts of equal size), an unbiased estimate of the rep-space Gramian of a batch of that size. Not in
the paper or LibMTL (which allows parameters only).

A task whose loss is exactly 0 (switched off by the training schedule) is inactive: the step and the projection run
over the active tasks' weights (which then sum to 1), the inactive task's stored weight keeps its value, and its
weight in the update is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.gradient_based import SubBatchGradientWeighting
from mtl_train.weighting.solvers import project_onto_simplex


def modo_weights(weights: Tensor, cross: Tensor, gamma: float, rho: float, active: Tensor | None = None) -> Tensor:
    """One MoDo step from the current ``weights`` lambda (``(k,)``) and A = G_1 G_2^T (``cross``, (k, k)):
    Proj(lambda - gamma (A lambda + rho lambda)) over the ``active`` tasks (default all), 0 for the others."""
    return project_onto_simplex(weights - gamma * (cross @ weights + rho * weights), active)


class MoDo(SubBatchGradientWeighting):
    """Double-sampling projected gradient step on the weights (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        gamma: float = 0.1,
        rho: float = 0.1,
        sampling: str = "three",
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, sampling=sampling, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk,
                         weight_ema=weight_ema)
        if not gamma >= 0:
            raise ConfigError(f"weighting.gamma must be >= 0 (the weights' step size, e.g. 0.1), got {gamma}")
        if not rho >= 0:
            raise ConfigError(f"weighting.rho must be >= 0 (the weights' ridge, e.g. 0.1), got {rho}")
        self.gamma = gamma
        self.rho = rho
        self.register_buffer("lambdas", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def cross_weights(self, cross: Tensor, active: Tensor) -> Tensor:
        weights = modo_weights(self.lambdas, cross.detach().to(torch.float64), self.gamma, self.rho, active)
        self.lambdas.copy_(torch.where(active, weights, self.lambdas))
        return weights
