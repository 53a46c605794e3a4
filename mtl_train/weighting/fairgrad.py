"""FairGrad: Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (arXiv 2402.15638).

Task i's "resource" is its first-order improvement u_i = g_i . d along the shared update d. FairGrad picks d in a
small ball maximising the alpha-fair utility sum_i u_i^(1 - alpha) / (1 - alpha) (sum_i log u_i for alpha = 1).
Its optimality conditions give d = sum_i w_i g_i with w > 0 solving

    (G G^T) w = w^(-1/alpha)        (element-wise power),

so every task's improvement is g_i . d = w_i^(-1/alpha). alpha = 1 is proportional fairness (Nash-MTL's equation
M w = 1/w), alpha = 2 minimum potential delay, alpha -> infinity max-min fairness, and alpha -> 0 linear
scalarisation (k = 1 gives w = ||g||^(-2 alpha / (alpha + 1)), which tends to 1).

Defaults. alpha = 1 (LibMTL's default and the authors' command-line default); every run script of the
authors (NYUv2, Cityscapes, CelebA, QM9) uses alpha = 2: ``weighting.alpha=2``. The authors' code also multiplies
the update by k and clips the shared gradient to norm 1 (``trainer.grad_clip=1.0`` does the clip; the factor k is a
learning-rate factor with SGD and none with Adam). Here d = sum_i w_i g_i (the paper's, and torchjd's,
direction); task-specific parameters get their own unweighted gradients, as with every gradient method here (LibMTL
backpropagates sum_i w_i L_i, which weights the heads too).

Solver (:func:`fairgrad_weights`). The references run scipy's trust-region least squares on the residual
G G^T w - w^(-1/alpha) on the CPU. Here the same equation is solved on the device, with a fixed amount of work and
no host synchronisation: it is the stationarity condition of the strictly convex

    f(w) = 1/2 w^T M w - sum_i phi(w_i),     phi(w) = log w (alpha = 1),  w^p / p (p = 1 - 1/alpha, otherwise),

on w > 0 (phi is concave), minimised by Newton's method (Hessian M + diag(w^(-1/alpha - 1) / alpha)), each step
the best point of a line search over the lengths 2^-j, so f never increases; a weight the step lowers moves
geometrically, so w stays positive (:func:`solve_fair_equation`). The problem is first made scale-free: with the
unit gradients' Gramian K (cosines) and the gradient norms n_i, v_i = n_i w_i solves
K v = n^(1/alpha - 1) * v^(-1/alpha), and dividing n by its root mean square r scales the solution by
r^(-2 alpha / (alpha + 1)); the start is the solution for orthogonal gradients, rescaled optimally along its ray.
A ridge ``eps`` I is added to K (more, up to 1, where rounding leaves K + eps I not positive definite): when
the gradients are linearly dependent (e.g. g_2 = -g_1) the equation has no solution, the weights grow (to about
eps^(-alpha / (alpha + 1)) / n_i) and d tends to 0, as with torchjd, but stays finite. Accuracy (float64, on 150
random problems with k = 2..10 tasks and gradient norms spread over 1e3): after the default 20 iterations d is within
2e-9 (relative) of its value after 150 for alpha <= 10 (and within 4e-2 for alpha = 20: large alpha needs more
``iterations``); the relative residual |(M w)_i w_i^(1/alpha) - 1| is below 1e-4 for every task whose term
w_i ||g_i|| is above 1e-6 of the largest (the ridge accounts for most of it). For large alpha some weights are tiny
at the solution (1e-12 and less); those converge last, and they do not move d.

A task whose gradient is exactly zero (switched off by the training schedule, or not reaching the shared part) gets
weight 0; the others solve their own equation. (The equation has no solution for it: its left side is 0, and the
references inflate its weight, e.g. to 591, which moves nothing as the row is zero.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum

_LINE_SEARCH_STEPS = 16  # step lengths 2^-j, j = 0..15, and 0
_FALLBACK_RIDGES = (1e-6, 1e-4, 1e-2, 1.0)  # tried in turn where eps leaves K not positive definite


def utility(v: Tensor, alpha: float) -> Tensor:
    """phi(v) element-wise: log v for alpha = 1, v^p / p with p = 1 - 1/alpha otherwise (v > 0)."""
    if alpha == 1:
        return torch.log(v)
    power = 1.0 - 1.0 / alpha
    return v**power / power


def fairgrad_objective(v: Tensor, cosines: Tensor, coefficients: Tensor, alpha: float) -> Tensor:
    """f(v) = 1/2 v^T K v - sum_i c_i phi(v_i) for v of shape (..., k); +inf where some v_i <= 0."""
    positive = (v > 0).all(-1)
    safe = torch.where(v > 0, v, 1.0)
    value = 0.5 * ((safe @ cosines) * safe).sum(-1) - (coefficients * utility(safe, alpha)).sum(-1)
    return torch.where(positive & ~torch.isnan(value), value, float("inf"))


def ray_start(cosines: Tensor, coefficients: Tensor, alpha: float) -> Tensor:
    """The solution for orthogonal gradients, v_i = c_i^(alpha / (alpha + 1)), times the t > 0 minimising f(t v):
    t^(1 + 1/alpha) = sum_i c_i v_i^(1 - 1/alpha) / v^T K v."""
    v = coefficients ** (alpha / (alpha + 1.0))
    quadratic = (v @ cosines @ v).clamp_min(1e-300)
    t = ((coefficients * v ** (1.0 - 1.0 / alpha)).sum() / quadratic) ** (alpha / (alpha + 1.0))
    return t * v


def solve_fair_equation(cosines: Tensor, coefficients: Tensor, alpha: float, iterations: int = 20) -> Tensor:
    """v > 0 with ``cosines @ v = coefficients * v^(-1/alpha)`` for a symmetric positive-definite ``cosines`` (k, k)
    and positive ``coefficients`` (k,), by ``iterations`` damped Newton steps on f (module docstring) from
    :func:`ray_start`. No host synchronisation; works in the dtype of ``cosines``.

    Each step s is tried at lengths t = 2^-j (j = 0..15) and 0, the best point for f winning; a component that the
    step lowers moves geometrically, v_i exp(t s_i / v_i), so it stays positive however far the step points (for
    large alpha some weights are tiny at the solution, 1e-20 and less, which a step capped at the boundary would
    approach by a factor per iteration); to first order this is the Newton step, so convergence stays quadratic."""
    lengths = torch.cat([0.5 ** torch.arange(_LINE_SEARCH_STEPS, dtype=cosines.dtype, device=cosines.device),
                         torch.zeros(1, dtype=cosines.dtype, device=cosines.device)]).unsqueeze(-1)
    v = ray_start(cosines, coefficients, alpha)
    for _ in range(iterations):
        pressure = coefficients * v ** (-1.0 / alpha)
        gradient = cosines @ v - pressure
        hessian = cosines + torch.diag(pressure / (alpha * v))
        factor, _ = torch.linalg.cholesky_ex(hessian)
        step = -torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
        candidates = torch.where(step >= 0, v + lengths * step, v * torch.exp(lengths * step / v))
        best = torch.argmin(fairgrad_objective(candidates, cosines, coefficients, alpha))
        v = torch.index_select(candidates, 0, best.view(1)).squeeze(0)
    return v


def _ridge(cosines: Tensor, eps: float) -> Tensor:
    """The smallest of ``eps`` and the fallbacks (none below ``eps``) whose half keeps ``cosines`` + ridge/2 I positive
    definite (one batched Cholesky test, no host read)."""
    ridges = torch.tensor([eps, *_FALLBACK_RIDGES], dtype=cosines.dtype, device=cosines.device).clamp_min(eps)
    eye = torch.eye(cosines.shape[0], dtype=cosines.dtype, device=cosines.device)
    _, info = torch.linalg.cholesky_ex(cosines + 0.5 * ridges.view(-1, 1, 1) * eye)
    first = torch.argmax((info == 0).to(torch.int8))
    return torch.index_select(ridges, 0, first.view(1)).squeeze(0)


def fairgrad_weights(gram: Tensor, alpha: float = 1.0, iterations: int = 20, eps: float = 1e-8) -> Tensor:
    """The ``(k,)`` FairGrad weights w > 0 with ``gram @ w = w^(-1/alpha)`` (``gram`` = G G^T, k x k) over the tasks
    whose gradient is nonzero, 0 for the others (all 0 when every gradient is zero). Solved in float64 on
    ``gram``'s device through the unit gradients (module docstring); returns ``gram``'s dtype."""
    k = gram.shape[0]
    matrix = gram.detach().to(torch.float64)
    matrix = 0.5 * (matrix + matrix.T)
    squared_norms = matrix.diagonal().clamp_min(0)
    active = squared_norms > 0
    count = active.sum().clamp_min(1)
    rms = (squared_norms.sum() / count).sqrt()
    norms = torch.where(active, squared_norms.sqrt() / torch.where(active, rms, 1.0), 1.0)  # relative, 1 when off
    eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    scaled = matrix / torch.outer(norms, norms) / torch.where(active.any(), rms * rms, 1.0)
    cosines = torch.where(active.unsqueeze(0) & active.unsqueeze(1), scaled, eye)
    cosines = cosines + _ridge(cosines, eps) * eye
    coefficients = norms ** (1.0 / alpha - 1.0)
    v = solve_fair_equation(cosines, coefficients, alpha, iterations)
    overall = torch.where(active.any(), rms, 1.0) ** (-2.0 * alpha / (alpha + 1.0))
    return torch.where(active, overall * v / norms, 0.0).to(gram.dtype)


class FairGrad(GradientWeighting):
    """alpha-fair gradient weights, (G G^T) w = w^(-1/alpha) (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.0,
        iterations: int = 20,
        eps: float = 1e-8,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
            raise ConfigError(f"weighting.alpha must be a number > 0 (1: proportional fairness, 2: the authors' "
                              f"runs), got {alpha!r}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1, got {iterations!r}")
        if not eps >= 0:
            raise ConfigError(f"weighting.eps must be >= 0, got {eps}")
        self.alpha = float(alpha)
        self.iterations = iterations
        self.eps = eps

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = fairgrad_weights(grads @ grads.T, self.alpha, self.iterations, self.eps)
        return weighted_sum(grads, weights.to(grads.dtype))
