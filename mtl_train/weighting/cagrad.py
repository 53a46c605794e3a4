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
from w = 1/k. Here: M is divided by its mean diagonal (the dual's minimiser is invariant to the scale of G), then
Frank-Wolfe with away steps from w = 1/k (:func:`mtl_train.weighting.solvers.frank_wolfe_simplex`), ``max_iter``
= 100, ``tol`` = 1e-6, with an *exact* line search: along w + gamma d the objective is
b_1 gamma + rho sqrt(p gamma^2 + 2 q gamma + r) (+ const), whose minimiser has a closed form
(:func:`_cagrad_line_search`). On random problems (k = 2..10, c = 0.1..2) this reaches the dual optimum to ~1e-7
(relative to the mean squared gradient norm) within 100 iterations, where projected gradient descent with a fixed
step from the Gramian's scale was still ~1e-2 off (the objective's curvature grows like 1/||g_w||). Like the
reference, ||g_w|| is floored by 1e-8 in d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import LineSearch, frank_wolfe_simplex, gramian, normalized_gramian


def _cagrad_line_search(scaled: Tensor, b: Tensor, rho: Tensor) -> LineSearch:
    """Exact line search for F(w) = w^T b + rho sqrt(w^T M w) along w + gamma d, gamma in [0, gamma_max].

    With p = d^T M d, q = w^T M d, r = w^T M w, b_1 = d^T b, F' = b_1 + rho (p gamma + q) / sqrt(p gamma^2 + 2 q gamma
    + r). If |b_1| >= rho sqrt(p) (incl. p = 0) F is monotone along the segment: gamma = gamma_max if b_1 < 0 else
    0. Otherwise, with kappa = -b_1 / rho and x = p gamma + q, F' = 0 gives x = sign(kappa) sqrt(kappa^2 (p r - q^2) /
    (p - kappa^2)), i.e. gamma = (x - q) / p, clipped to [0, gamma_max] (F is convex, so clipping is exact).
    """
    def line_search(w: Tensor, direction: Tensor, gamma_max: Tensor) -> Tensor:
        md = scaled @ direction
        p, q, r, b1 = direction @ md, w @ md, w @ scaled @ w, direction @ b
        kappa = -b1 / rho.clamp_min(1e-300)
        interior = (rho > 0) & (kappa * kappa < p)
        monotone = torch.where(b1 < 0, gamma_max, torch.zeros_like(gamma_max))
        denominator = torch.where(interior, p - kappa * kappa, torch.ones_like(p))
        x = torch.sign(kappa) * (kappa * kappa * (p * r - q * q).clamp_min(0) / denominator).sqrt()
        stationary = (x - q) / torch.where(interior, p, torch.ones_like(p))
        return torch.where(interior, stationary, monotone)

    return line_search


def cagrad_dual(gram: Tensor, c: float, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """w* = argmin_{w in simplex} w^T M 1/k + c ||g_0|| sqrt(w^T M w), from the Gramian M (k x k)."""
    k = gram.shape[0]
    scaled, _ = normalized_gramian(gram)
    b = scaled.mean(1)
    rho = c * scaled.mean().clamp_min(0).sqrt()

    def gradient(w: Tensor) -> Tensor:
        mw = scaled @ w
        return b + rho * mw / (w @ mw).clamp_min(1e-30).sqrt()

    return frank_wolfe_simplex(gradient, _cagrad_line_search(scaled, b, rho), k, gram, max_iter=max_iter, tol=tol)


def cagrad_weights(gram: Tensor, c: float = 0.4, rescale: bool = True, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """The ``(k,)`` weights of CAGrad's update d = weights @ G: (1/k) 1 + (c ||g_0|| / ||g_w*||) w*, over (1 + c^2)
    when ``rescale``."""
    k = gram.shape[0]
    mean = torch.full((k,), 1.0 / k, dtype=gram.dtype, device=gram.device)
    if c == 0:
        return mean
    w = cagrad_dual(gram, c, max_iter=max_iter, tol=tol)
    g0_norm = gram.mean().clamp_min(0).sqrt()
    gw_norm = (w @ gram @ w).clamp_min(0).sqrt()
    weights = mean + (c * g0_norm / (gw_norm + 1e-8)) * w
    return weights / (1 + c * c) if rescale else weights


class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        c: float = 0.4,
        rescale: bool = True,
        mode: str = "params",
        max_iter: int = 100,
        tol: float = 1e-6,
    ) -> None:
        super().__init__(task_names, mode=mode)
        if not c >= 0:
            raise ConfigError(f"weighting.c must be >= 0, got {c}")
        if not isinstance(rescale, bool):
            raise ConfigError(f"weighting.rescale must be true or false, got {rescale!r}")
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ConfigError(f"weighting.max_iter must be an integer >= 1, got {max_iter!r}")
        if not tol >= 0:
            raise ConfigError(f"weighting.tol must be >= 0, got {tol}")
        self.c = float(c)
        self.rescale = rescale
        self.max_iter = max_iter
        self.tol = tol

    def aggregate(self, grads: Tensor) -> Aggregation:
        weights = cagrad_weights(gramian(grads), self.c, self.rescale, self.max_iter, self.tol)
        return weighted_sum(grads, weights.to(grads.dtype))
