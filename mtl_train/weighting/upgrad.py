"""UPGrad (Unconflicting Projection of Gradients): Quinton & Rey, "Jacobian Descent for Multi-Objective
Optimization", arXiv 2406.16232, 2024 (reference implementation: torchjd).

Every row g_i of the Jacobian J (= G, k x d) is projected onto the dual cone {x : J x >= 0} of the rows, and the
update is the mean (1/k) sum_i pi_J(g_i): it conflicts with no task. In weight space (Proposition 1 of the paper),
pi_J(u^T J) = v^T J with v = argmin_v v^T M v s.t. v >= u, M = J J^T. With u_i = e_i / k, the weights are
w = sum_i v_i and the update is w^T J.

As torchjd (and LibMTL's copy): M is normalised by its trace (the squared Frobenius norm of J; a trace below
``norm_eps`` = 1e-4 gives M = 0) and regularised, M + ``reg_eps`` I with reg_eps = 1e-4, so the QPs are strictly
convex; the weights apply to the unnormalised J. The pref vector is 1/k (the mean).

Solver. torchjd solves each QP with quadprog on the CPU. Here the k problems
min_x 1/2 x^T M x + (M u_i)^T x s.t. x >= 0 (v = u_i + x) are solved together in torch, in float64 on the
gradients' device (:func:`nonnegative_qp`): up to 8 tasks exactly, by enumerating the supports (one batched solve,
:mod:`mtl_train.weighting.solvers`); above, a fixed number of Mehrotra predictor-corrector interior-point
iterations (default 20), then an active-set polish (the equality-constrained solve on the identified free set,
kept where it satisfies the KKT conditions, i.e. exact up to rounding). No host synchronisation. On 600 random
and degenerate (rank-1, nearly opposite rows) problems with k <= 10 the v_i match a brute-force active-set
enumeration to 1e-8 (the remaining gap sits in degenerate cases with zero multipliers).

A task whose loss is exactly 0 (switched off by the training schedule) has a zero row, which constrains nothing;
the update is the mean over the active tasks' projected rows (u_i = e_i / k_active for the active i, no QP term
for the others) and the inactive tasks get weight 0. With one active task, d is its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting
from mtl_train.weighting.solvers import (
    ENUMERATION_MAX_TASKS,
    TO_BOUNDARY,
    best_feasible,
    max_step,
    solve_on_supports,
    supports,
)

_POLISH_ROUNDS = 3


def nonnegative_qp(matrix: Tensor, linear: Tensor, iterations: int = 20) -> Tensor:
    """x >= 0 minimising 1/2 x^T Q x + c^T x for a symmetric positive-definite ``matrix`` Q (k, k) and a batch of
    linear terms ``linear`` c (b, k); returns x (b, k). Up to ``ENUMERATION_MAX_TASKS`` tasks by support enumeration
    (on support S, Q_SS x_S = -c_S; the empty support is x = 0), else Mehrotra predictor-corrector interior point
    (``iterations`` steps) followed by an active-set polish; no host synchronisation."""
    batch, k = linear.shape
    if k <= ENUMERATION_MAX_TASKS:
        candidates = solve_on_supports(matrix, -linear.T, supports(k, matrix.device)).transpose(1, 2)  # (2^k, b, k)
        objective = (0.5 * (candidates @ matrix) * candidates + linear * candidates).sum(-1)
        return best_feasible(candidates, objective)
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    scale = torch.diagonal(matrix).mean().clamp_min(1e-300)
    x = torch.full_like(linear, 0.1 / k)  # a start that worked best on random and degenerate k <= 10 problems
    s = torch.ones_like(linear) * scale
    for _ in range(iterations):
        dual_residual = x @ matrix + linear - s
        mu = (x * s).mean(-1, keepdim=True)
        system = matrix + torch.diag_embed(s / x)
        factor, _ = torch.linalg.cholesky_ex(system)

        def newton(complementarity: Tensor) -> tuple[Tensor, Tensor]:
            rhs = -dual_residual + complementarity / x
            dx = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
            return dx, (complementarity - s * dx) / x

        dx_aff, ds_aff = newton(-x * s)
        t_aff = torch.minimum(max_step(x, dx_aff, 1.0), max_step(s, ds_aff, 1.0))
        mu_aff = ((x + t_aff * dx_aff) * (s + t_aff * ds_aff)).mean(-1, keepdim=True)
        sigma = (mu_aff / mu.clamp_min(1e-300)).clamp(0.0, 1.0) ** 3
        dx, ds = newton(-x * s - dx_aff * ds_aff + sigma * mu)
        t = torch.minimum(max_step(x, dx, TO_BOUNDARY), max_step(s, ds, TO_BOUNDARY))
        x = x + t * dx
        s = s + t * ds
    # Active-set polish, a few primal-dual active-set (PDAS) rounds started from the interior point: on the free set
    # F = {x > s} solve Q_FF x_F = -c_F with x = 0 elsewhere, then s = Q x + c; keep the first round whose
    # (x, s) satisfies the KKT conditions (it is then the exact solution), else the interior point.
    result, done = x, torch.zeros_like(x[:, :1], dtype=torch.bool)
    tol = 1e-12 * (1.0 + linear.abs().amax(-1, keepdim=True))
    for _ in range(_POLISH_ROUNDS):
        free = x > s
        both_free = free.unsqueeze(-1) & free.unsqueeze(-2)
        reduced = torch.where(both_free, matrix.expand(batch, k, k), eye.expand(batch, k, k))
        x, _ = torch.linalg.solve_ex(reduced, torch.where(free, -linear, torch.zeros_like(linear)))
        x = torch.where(free, x, torch.zeros_like(x))
        s = x @ matrix + linear
        ok = ((x >= -tol) & (free | (s >= -tol))).all(-1, keepdim=True) & torch.isfinite(x).all(-1, keepdim=True)
        result = torch.where(ok & ~done, x.clamp_min(0.0), result)
        done = done | ok
        s = torch.where(free, torch.zeros_like(s), s)  # the multipliers of the free set are 0
    return result


def upgrad_weights(gram: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4, iterations: int = 20,
                   active: Tensor | None = None) -> Tensor:
    """The UPGrad weights w (k,) for the Gramian ``gram = J J^T`` (k, k): the update is ``w @ J``. Row i of the
    projection matrix V (k, k), ``V[i] @ J = pi_J(J[i]) / k``, is available from :func:`upgrad_projection_weights`.
    With ``active`` (``(k,)`` bool, default all), the mean runs over the active rows and the others get weight 0."""
    if active is None:
        active = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    return torch.where(active, upgrad_projection_weights(gram, norm_eps, reg_eps, iterations, active).sum(0), 0.0)


def upgrad_projection_weights(gram: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4, iterations: int = 20,
                              active: Tensor | None = None) -> Tensor:
    """V (k, k) with row i = argmin_v v^T M v s.t. v >= e_i / k, M = the trace-normalised, regularised ``gram``;
    ``V[i] @ J`` is (1/k) times the projection of row i of J onto the dual cone {x : J x >= 0}. With ``active``
    (``(k,)`` bool, default all), k is the number of active tasks and the rows of the inactive ones are 0. Float64
    inside, returns ``gram``'s dtype."""
    k = gram.shape[0]
    if active is None:
        active = torch.ones(k, dtype=torch.bool, device=gram.device)
    matrix = gram.detach().to(torch.float64)
    matrix = 0.5 * (matrix + matrix.T)
    trace = torch.diagonal(matrix).sum()
    matrix = torch.where(trace < norm_eps, torch.zeros_like(matrix), matrix / trace.clamp_min(1e-300))
    matrix = matrix + reg_eps * torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    lower = torch.diag(active.to(matrix.dtype)) / active.sum().clamp_min(1)  # row i = u_i = e_i / k (active i)
    # v_i = u_i + x_i with x_i >= 0 minimising 1/2 x^T M x + (M u_i)^T x
    slack = nonnegative_qp(matrix, lower @ matrix, iterations)
    return (lower + slack).to(gram.dtype)


class UPGrad(GradientWeighting):
    """The mean of the rows of G, each projected onto the dual cone of all rows (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        iterations: int = 20,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not norm_eps >= 0:
            raise ConfigError(f"weighting.norm_eps must be >= 0, got {norm_eps}")
        if not reg_eps > 0:
            raise ConfigError(f"weighting.reg_eps must be > 0 (it makes the QPs strictly convex), got {reg_eps}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1, got {iterations!r}")
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.iterations = iterations

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = upgrad_weights(grads @ grads.T, self.norm_eps, self.reg_eps, self.iterations, active_tasks(losses))
        return Aggregation(weights @ grads, weights)
