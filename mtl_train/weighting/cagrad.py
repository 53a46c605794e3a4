"""CAGrad: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.

With g_0 = (1/k) sum_i g_i, CAGrad takes the direction that maximises the worst task improvement in a ball around
g_0: max_d min_i <g_i, d> s.t. ||d - g_0|| <= c ||g_0||. Its dual is

    w* = argmin_{w in simplex} g_w^T g_0 + sqrt(phi) ||g_w||,     g_w = sum_i w_i g_i,  phi = c^2 ||g_0||^2,

and the update is d = g_0 + (sqrt(phi) / ||g_w*||) g_w*, divided by (1 + c^2) when ``rescale`` (the reference
code's default ``rescale=1``; Nash-MTL additionally multiplies by k). As d is linear in the rows, the returned
weights are (1/k) 1 + (sqrt(phi) / ||g_w*||) w*, divided by (1 + c^2) when rescaling. c = 0 gives exactly the mean
gradient; c -> infinity approaches MGDA; convergence to an optimum of the average loss needs c < 1.

Defaults: c = 0.4, the paper's NYUv2 setting (also the Nash-MTL / FAMO repositories'); LibMTL's default ``calpha``
is 0.5. ``rescale = true`` as the reference code.

Solver (:func:`cagrad_weights`, on the Gramian M = G G^T only). The reference solves the dual with scipy SLSQP
from w = 1/k, on the CPU. Here, on the device: M is divided by its mean diagonal (the dual's minimiser is invariant
to the scale of G); up to 8 tasks the dual is solved exactly by enumerating the supports of w (:func:`cagrad_dual`);
above, a primal-dual interior-point method on the simplex runs a fixed number of ``iterations`` (default 15;
:func:`mtl_train.weighting.solvers.simplex_interior_point`, with the objective's exact gradient
b + rho M w / ||g_w|| and Hessian rho (M / ||g_w|| - M w w^T M / ||g_w||^3)). On 300 random and degenerate problems
(k = 2..10, c = 0.1..2) the interior point reaches the dual optimum to ~1e-12 (relative to the mean squared gradient
norm) within 15 iterations, except where the optimum is a kink of the objective (g_w* = 0: the gradients are
Pareto-stationary and c >= 1, where CAGrad's update is undefined anyway). Like the reference, ||g_w|| is floored by
1e-8 in d.

A task whose gradient is exactly zero (switched off by the training schedule, its loss is 0) is left out: g_0 is the
mean of the other gradients, the dual runs over them (:func:`cagrad_dual`) and the task's weight is 0. Otherwise
the dual's optimum would be that zero gradient (g_w* = 0), the conflict-averse term would vanish, and the recorded
weight of the zero row would be c ||g_0|| / 1e-8 (about 2e7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import (
    ENUMERATION_MAX_TASKS,
    best_feasible,
    bordered,
    bordered_supports,
    gramian,
    normalized_gramian,
    simplex_interior_point,
    solve_on_supports,
)


def mean_over_active(gram: Tensor) -> Tensor:
    """The ``(k,)`` weights of g_0, the mean of the nonzero gradients: 1 / (their count) on them, 0 on zero ones
    (tasks switched off by the training schedule); all 0 when every gradient is zero."""
    active = (gram.diagonal() > 0).to(gram.dtype)
    return active / active.sum().clamp_min(1)


def cagrad_dual(gram: Tensor, c: float, iterations: int = 15) -> Tensor:
    """w* = argmin_{w in simplex} w^T M a + c ||g_0|| sqrt(w^T M w), from the Gramian M (k x k), with a the weights
    of g_0 = G^T a (:func:`mean_over_active`), over the tasks with a nonzero gradient (w* is 0 on the others).

    A zero gradient t would give F(e_t) = 0, below the optimum over the other tasks whenever they can all improve
    (then w* = e_t, g_w* = 0, and the conflict-averse term vanishes). Its linear cost b_t is therefore raised to
    (1 + c) ||g_0||^2 + 1, above F at w = a, which bounds the optimum over the nonzero gradients: as F is linear in
    the mass moved onto zero gradients, none is moved.

    Up to ``ENUMERATION_MAX_TASKS`` tasks by support enumeration: on a support S the optimality conditions
    b + rho M w / ||g_w|| = lambda 1 read, with s = ||g_w|| / rho, as the bordered system [[M_SS, -1], [1^T, 0]]
    [w; mu] = [-s b_S; 1], so w = w_a + s w_b (two right-hand sides), and s solves
    rho^2 s^2 = (w_a + s w_b)^T M (w_a + s w_b), a quadratic; both roots are candidates, and w_a itself (which keeps
    a candidate on every support when g_0 = 0). Above that, the interior point.
    """
    k = gram.shape[0]
    scaled, _ = normalized_gramian(gram)
    mean = mean_over_active(scaled)
    g0_squared = (mean @ scaled @ mean).clamp_min(0)
    b = torch.where(scaled.diagonal() > 0, scaled @ mean, (1 + c) * g0_squared + 1)
    rho = c * g0_squared.sqrt()

    def objective(w: Tensor) -> Tensor:
        return w @ b + rho * ((w @ scaled) * w).sum(-1).clamp_min(0).sqrt()

    if k <= ENUMERATION_MAX_TASKS:
        rhs = torch.zeros(k + 1, 2, dtype=scaled.dtype, device=scaled.device)
        rhs[k, 0] = 1.0
        rhs[:k, 1] = -b
        solutions = solve_on_supports(bordered(scaled), rhs, bordered_supports(k, scaled.device))
        w_a, w_b = solutions[:, :k, 0], solutions[:, :k, 1]
        m_a, m_b = w_a @ scaled, w_b @ scaled
        aa, ab, bb = (m_a * w_a).sum(-1), (m_a * w_b).sum(-1), (m_b * w_b).sum(-1)
        quadratic = rho * rho - bb  # quadratic * s^2 - 2 ab s - aa = 0
        root = (ab * ab + quadratic * aa).clamp_min(0).sqrt()
        safe = torch.where(quadratic != 0, quadratic, 1.0)
        roots = torch.stack([torch.where(quadratic != 0, (ab + root) / safe, -aa / (2 * ab)),
                             torch.where(quadratic != 0, (ab - root) / safe, -aa / (2 * ab)),
                             torch.zeros_like(ab)])  # s = 0: w_a, a feasible point even where rho = 0
        roots = torch.where(roots >= 0, roots, float("nan"))  # s = ||g_w|| / rho >= 0
        candidates = (w_a + roots.unsqueeze(-1) * w_b).flatten(0, 1)
        candidates = candidates / candidates.sum(-1, keepdim=True)  # on the simplex despite rounding
        return best_feasible(candidates, objective(candidates))

    def gradient_and_hessian(w: Tensor) -> tuple[Tensor, Tensor]:
        mw = scaled @ w
        norm = (w @ mw).clamp_min(1e-30).sqrt()
        return b + rho * mw / norm, rho * (scaled / norm - torch.outer(mw, mw) / norm**3)

    return simplex_interior_point(objective, gradient_and_hessian, k, gram, iterations)


def cagrad_weights(gram: Tensor, c: float = 0.4, rescale: bool = True, iterations: int = 15) -> Tensor:
    """The ``(k,)`` weights of CAGrad's update d = weights @ G: a + (c ||g_0|| / ||g_w*||) w*, over (1 + c^2) when
    ``rescale``, with a = 1/k' on the k' nonzero gradients (:func:`mean_over_active`): a zero gradient's weight is
    0."""
    mean = mean_over_active(gram)
    if c == 0:
        return mean
    w = torch.where(gram.diagonal() > 0, cagrad_dual(gram, c, iterations), 0.0)  # the interior point leaves ~1e-13
    g0_norm = (mean @ gram @ mean).clamp_min(0).sqrt()
    gw_norm = (w @ gram @ w).clamp_min(0).sqrt()
    weights = mean + (c * g0_norm / (gw_norm + 1e-8)) * w
    return weights / (1 + c * c) if rescale else weights


class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        c: float = 0.4,
        rescale: bool = True,
        mode: str = "params",
        iterations: int = 15,
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not c >= 0:
            raise ConfigError(f"weighting.c must be >= 0, got {c}")
        if not isinstance(rescale, bool):
            raise ConfigError(f"weighting.rescale must be true or false, got {rescale!r}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1, got {iterations!r}")
        self.c = float(c)
        self.rescale = rescale
        self.iterations = iterations

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = cagrad_weights(gramian(grads), self.c, self.rescale, self.iterations)
        return weighted_sum(grads, weights.to(grads.dtype))
