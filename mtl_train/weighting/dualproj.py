"""DualProj: Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024 (reference
implementation: torchjd). The projection is that of Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual
Learning", NeurIPS 2017, Eq. 11.

The update is the mean gradient projected onto the dual cone of the task gradients (the rows g_i of G, k x d):

    d = argmin_{x : G x >= 0} ||x - G^T u||^2,      u = (1/k, ..., 1/k),

so no task's loss increases to first order (g_i . d >= 0 for every i), and d is the mean itself when the mean
conflicts with no task. In weight space (Proposition 1 of the paper) d = G^T v with

    v = argmin_{v >= u} v^T M v,      M = G G^T (the Gramian),

and v are the effective weights (v >= u componentwise). Scaling every row by c > 0 leaves v unchanged and scales d
by c. Where the mean needs no projection, d = mean; for two anti-parallel rows, d = 0; for k = 1, d = g.

Solver. The QP is the one box-constrained QP of UPGrad (:func:`mtl_train.weighting.upgrad.nonnegative_qp`, exact
support enumeration up to 8 tasks, interior point plus an active-set polish above; float64, on the gradients' device,
no host synchronisation), written two ways (``normalization``):

* ``unit`` (default, the paper's exact projection): on the unit gradients. With y_i = ||g_i|| v_i the problem reads
  min y^T K y s.t. y_i >= ||g_i|| u_i, with K the cosine matrix (unit diagonal) whatever the spread of the gradient
  norms; ``reg_eps`` (default 1e-8) adds reg_eps * I to K, so the QP stays strictly convex when gradients are linearly
  dependent, and perturbs each task relative to its own norm. The projection is then exact to about reg_eps.
* ``trace`` (torchjd's ``DualProj``; use ``reg_eps: 1.0e-4`` for its defaults): M divided by its trace (0 when the
  trace is below ``norm_eps``) plus reg_eps * I. A task whose squared norm is below about reg_eps times the trace is
  then barely protected: with rows of norms spread 100:1 (rows 10 g1, g2, 0.1 g3 of a conflicting set), torchjd's
  defaults leave g3 . d = -0.49 where the exact projection gives 0.

A zero gradient row constrains nothing (its weight is u_i, its contribution 0). A task whose loss is exactly 0
(switched off by the training schedule) is left out: u is 1/k' on the k' active tasks, and its weight is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian
from mtl_train.weighting.upgrad import nonnegative_qp

NORMALIZATIONS = ("unit", "trace")


def lower_bounded_minimum(matrix: Tensor, lower: Tensor, iterations: int) -> Tensor:
    """argmin_{v >= lower} v^T Q v for a symmetric positive-definite ``matrix`` Q (k, k): v = lower + x with x >= 0
    minimising 1/2 x^T Q x + (Q lower)^T x."""
    return lower + nonnegative_qp(matrix, (lower @ matrix).unsqueeze(0), iterations)[0]


def dualproj_weights(gram: Tensor, active: Tensor | None = None, normalization: str = "unit", reg_eps: float = 1e-8,
                     norm_eps: float = 1e-4, iterations: int = 20) -> Tensor:
    """The DualProj weights v (k,) for the Gramian ``gram = G G^T`` (k, k): v = argmin_{v >= u} v^T M v with u = 1/k'
    on the k' ``active`` tasks ((k,) bool, default all; the others get weight 0); the update is v @ G. Solved in
    float64 (see the module docstring for ``normalization``, ``reg_eps`` and ``norm_eps``); returns ``gram``'s
    dtype."""
    k = gram.shape[0]
    if active is None:
        active = torch.ones(k, dtype=torch.bool, device=gram.device)
    matrix = gram.detach().to(torch.float64)
    matrix = 0.5 * (matrix + matrix.T)
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    mean = active.to(matrix.dtype) / active.sum().clamp_min(1)
    if normalization == "trace":
        trace = matrix.diagonal().sum()
        matrix = torch.where(trace < norm_eps, torch.zeros_like(matrix), matrix / trace.clamp_min(1e-300))
        weights = lower_bounded_minimum(matrix + reg_eps * eye, mean, iterations)
    else:
        norms = matrix.diagonal().clamp_min(0).sqrt()
        nonzero = norms > 0
        inverse_norms = torch.where(nonzero, 1 / torch.where(nonzero, norms, 1.0), 0.0)
        cosines = torch.where(nonzero.unsqueeze(0) & nonzero.unsqueeze(1),
                              matrix * inverse_norms.unsqueeze(0) * inverse_norms.unsqueeze(1), eye)
        scaled = lower_bounded_minimum(cosines + reg_eps * eye, norms * mean, iterations)  # y = ||g|| v
        weights = torch.where(nonzero, scaled * inverse_norms, mean)  # a zero row: v = u, it adds nothing
    return torch.where(active, weights, 0.0).to(gram.dtype)


class DualProj(GradientWeighting):
    """The mean gradient projected onto the dual cone of the task gradients (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        normalization: str = "unit",
        reg_eps: float = 1e-8,
        norm_eps: float = 1e-4,
        iterations: int = 20,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"weighting.normalization must be 'unit' (exact projection) or 'trace' (torchjd), "
                              f"got {normalization!r}")
        if not reg_eps > 0:
            raise ConfigError(f"weighting.reg_eps must be > 0 (it makes the QP strictly convex), got {reg_eps}")
        if not norm_eps >= 0:
            raise ConfigError(f"weighting.norm_eps must be >= 0, got {norm_eps}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1, got {iterations!r}")
        self.normalization = normalization
        self.reg_eps = reg_eps
        self.norm_eps = norm_eps
        self.iterations = iterations

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = dualproj_weights(gramian(grads), active_tasks(losses), self.normalization, self.reg_eps,
                                   self.norm_eps, self.iterations)
        return weighted_sum(grads, weights.to(grads.dtype))
