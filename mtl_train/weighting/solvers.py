"""Small solvers over the k x k Gramian M = G G^T of the per-task gradients (rows of G), shared by the
gradient-combination methods.

Everything here runs on the Gramian's device, for tiny k (2 to ~20 tasks), with a fixed amount of work and no
host synchronisation: no ``.item()``, ``.cpu()`` or ``.tolist()``, and no Python branching on tensor values (choices
are ``torch.where`` masks, a best candidate is picked with ``argmin`` + ``gather`` / ``index_select``). A step on the GPU therefore
queues a fixed sequence of small kernels and never waits for them (``tests/weighting/test_host_sync.py``).

Two strategies serve the constrained problems (the min-norm point of MGDA, CAGrad's dual,
UPGrad's box QPs):

* up to ``ENUMERATION_MAX_TASKS`` tasks, **support enumeration**: the optimum is the solution of the optimality
  conditions restricted to its support (the tasks with a nonzero weight), a small linear system; all 2^k supports
  are solved in one batched ``torch.linalg.solve_ex``, and the feasible candidate with the best objective wins. Every
  feasible candidate is a feasible point evaluated with the true objective, so the winner is the optimum up to
  rounding. About 20 tensor operations whatever k, against ~100 per interior-point iteration: on the CPU, where each
  small operation costs microseconds of dispatch, this is what keeps a step of MGDA-UB close to one of EW;
* above it, a **primal-dual interior-point method** with a fixed number of iterations
  (:func:`simplex_interior_point`; UPGrad's own in :mod:`mtl_train.weighting.upgrad`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mtl_train.weighting.base import share_over_active

#: Task counts up to which constrained problems are solved by support enumeration (2^k small systems).
ENUMERATION_MAX_TASKS = 8
#: Step lengths tried by the interior-point line search: t_max * 2^-j for j < LINE_SEARCH_STEPS, and 0.
LINE_SEARCH_STEPS = 12
#: Smallest complementarity targeted by the interior point (the problems are scaled to O(1) values first).
COMPLEMENTARITY_FLOOR = 1e-13
#: Fraction-to-boundary rule of the interior-point methods: a step goes at most this far to the nearest bound.
TO_BOUNDARY = 0.99


def gramian(grads: Tensor) -> Tensor:
    """M = G G^T in float64 (the k x k inner products of the rows of ``grads``; the product itself runs in the
    dtype of ``grads``, only the tiny result is upcast so the solvers are numerically comfortable)."""
    return (grads @ grads.T).double()


def normalized_gramian(gram: Tensor) -> tuple[Tensor, Tensor]:
    """``(gram / s, s)`` with s = the mean squared gradient norm (mean of the diagonal, floored at the smallest
    positive normal number). Solvers whose solution is invariant to the scale of G run on ``gram / s`` so that their
    tolerances are scale-free."""
    scale = gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)
    return gram / scale, scale


def min_norm_two_points(v1v1: Tensor, v1v2: Tensor, v2v2: Tensor) -> Tensor:
    """argmin over gamma in [0, 1] of ||(1 - gamma) v1 + gamma v2||^2, from the three inner products.

    gamma = (v1v1 - v1v2) / ||v1 - v2||^2 clipped to [0, 1]; 0 when v1 = v2 (any gamma is optimal).
    (Sener & Koltun's ``_min_norm_element_from2`` clips to [0.001, 0.999] instead and returns the weight of v1.)
    """
    denominator = v1v1 + v2v2 - 2 * v1v2
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (v1v1 - v1v2) / safe, torch.zeros_like(denominator)).clamp(0.0, 1.0)


def supports(k: int, device: torch.device) -> Tensor:
    """All 2^k subsets of ``range(k)`` (the empty one first) as the rows of a boolean ``(2^k, k)`` mask."""
    codes = torch.arange(2**k, device=device)
    return (codes.unsqueeze(1) >> torch.arange(k, device=device)) % 2 == 1


def solve_on_supports(matrix: Tensor, rhs: Tensor, active: Tensor) -> Tensor:
    """``(n, m, r)``: for every row A of ``active`` (n, m), the solution x of ``matrix[A, A] x[A] = rhs[A]``
    (``matrix`` (m, m), ``rhs`` (m, r)) with x = 0 off A; NaN where that system is singular. One batched solve."""
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    systems = torch.where(active.unsqueeze(-1) & active.unsqueeze(-2), matrix, eye)
    solutions, info = torch.linalg.solve_ex(systems, torch.where(active.unsqueeze(-1), rhs, 0.0))
    solutions = torch.where(active.unsqueeze(-1), solutions, 0.0)
    return torch.where((info == 0).view(-1, 1, 1), solutions, float("nan"))


def best_feasible(candidates: Tensor, objective: Tensor) -> Tensor:
    """Along dim 0, the candidate with the smallest ``objective`` among those that are finite and nonnegative (up to
    -1e-12), clamped to >= 0: ``candidates`` (n, ..., k) and ``objective`` (n, ...) give (..., k)."""
    feasible = (candidates >= -1e-12).all(-1) & torch.isfinite(candidates).all(-1) & torch.isfinite(objective)
    best = torch.argmin(torch.where(feasible, objective, float("inf")), dim=0)
    index = best.unsqueeze(0).unsqueeze(-1).expand(1, *candidates.shape[1:])
    return torch.gather(candidates, 0, index).squeeze(0).clamp_min(0.0)


def bordered_supports(k: int, device: torch.device) -> Tensor:
    """``(2^k, k + 1)``: every support of ``range(k)`` plus the always-active border row of a :func:`bordered`
    system, for :func:`solve_on_supports`."""
    masks = supports(k, device)
    return torch.cat([masks, torch.ones_like(masks[:, :1])], 1)


def bordered(matrix: Tensor) -> Tensor:
    """``[[M, -1], [1^T, 0]]``: the optimality conditions M w - mu 1 = r, sum w = 1 of a quadratic on the hyperplane
    sum w = 1."""
    ones = torch.ones_like(matrix[:, :1])
    return torch.cat([torch.cat([matrix, -ones], 1), torch.cat([ones.T, torch.zeros_like(ones[:1])], 1)], 0)


def max_step(values: Tensor, steps: Tensor, fraction: float) -> Tensor:
    """Per row (last dim kept, size 1), min(1, fraction * the step length t at which values + t * steps first reaches
    0) for positive ``values``."""
    ratios = torch.where(steps < 0, -values / steps, float("inf"))
    return (fraction * ratios.amin(-1, keepdim=True)).clamp(max=1.0)


def simplex_interior_point(
    objective: Callable[[Tensor], Tensor],
    gradient_and_hessian: Callable[[Tensor], tuple[Tensor, Tensor]],
    k: int,
    like: Tensor,
    iterations: int = 15,
) -> Tensor:
    """Minimise a smooth convex f over the simplex {w >= 0, sum w = 1} by a primal-dual interior-point method.

    ``objective(W)`` evaluates f on a batch of points (rows of W), ``gradient_and_hessian(w)`` gives f's gradient and
    Hessian at one point; values should be O(1) (scale the problem first). Mehrotra's predictor-corrector
    (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 16.4, here with the equality constraint sum w = 1 and a
    convex objective) from w = 1/k: each iteration solves the Newton system of the perturbed KKT conditions
    grad f(w) - s - lambda 1 = 0, w_i s_i = tau, sum w = 1 (one Cholesky factorisation of H + diag(s/w), the
    equality handled by a Schur complement), with tau = sigma mu (floored at ``COMPLEMENTARITY_FLOOR``) and
    sigma = (mu_affine / mu)^3. The step is capped by the fraction-to-boundary rule (w, s > 0) and chosen among
    t_max * 2^-j and 0 as the minimiser of the barrier merit f(w) - tau sum log w (one batched evaluation), so a
    nonlinear f cannot make the iterates diverge.

    ``like`` gives the dtype and device. A fixed number of ``iterations``, no host synchronisation. On 300 random
    and degenerate problems (k = 2..10, rank-deficient, gradient norms spread by 1e3) the min-norm (MGDA) and CAGrad
    objectives are within 2e-12 of a 3000-iteration Frank-Wolfe reference after 15 iterations.
    """
    w = torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
    s = torch.ones_like(w)
    multiplier = torch.zeros((), dtype=like.dtype, device=like.device)
    ones = torch.ones_like(w)
    lengths = torch.cat([0.5 ** torch.arange(LINE_SEARCH_STEPS, dtype=like.dtype, device=like.device),
                         torch.zeros(1, dtype=like.dtype, device=like.device)])
    for _ in range(iterations):
        gradient, hessian = gradient_and_hessian(w)
        dual_residual = gradient - s - multiplier
        mu = (w * s).mean()
        factor, _ = torch.linalg.cholesky_ex(hessian + torch.diag(s / w))

        def newton(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            # (H + S/W) dw - dlambda 1 = -r + (target - w s) / w,  sum dw = 0,  ds = (target - w s - s dw) / w
            solutions = torch.cholesky_solve(torch.stack([-dual_residual + (target - w * s) / w, ones], 1), factor)
            d_multiplier = -solutions[:, 0].sum() / solutions[:, 1].sum()
            dw = solutions[:, 0] + d_multiplier * solutions[:, 1]
            return dw, (target - w * s - s * dw) / w, d_multiplier

        primal_dual = torch.cat([w, s])
        dw_affine, ds_affine, _ = newton(torch.zeros_like(w))
        t_affine = max_step(primal_dual, torch.cat([dw_affine, ds_affine]), 1.0)
        mu_affine = ((w + t_affine * dw_affine) * (s + t_affine * ds_affine)).mean()
        sigma = (mu_affine / mu.clamp_min(1e-300)).clamp(0.0, 1.0) ** 3
        tau = (sigma * mu).clamp_min(COMPLEMENTARITY_FLOOR)
        dw, ds, d_multiplier = newton(tau - dw_affine * ds_affine)
        steps = max_step(primal_dual, torch.cat([dw, ds]), TO_BOUNDARY) * lengths
        candidates = w + steps.unsqueeze(1) * dw
        merit = objective(candidates) - tau * torch.log(candidates.clamp_min(1e-300)).sum(1)
        step = torch.index_select(steps, 0, torch.argmin(merit).view(1)).squeeze(0)
        w = w + step * dw
        s = s + step * ds
        multiplier = multiplier + step * d_multiplier
    return w


def min_norm_point(gram: Tensor, iterations: int = 15) -> Tensor:
    """alpha = argmin_{alpha in simplex} ||alpha @ G||^2 = alpha^T M alpha, the min-norm point of the convex hull
    of the rows of G, from the Gramian M (k x k).

    k = 1: alpha = (1,). k = 2: the closed form alpha_1 = clip((g2 - g1)^T g2 / ||g1 - g2||^2, 0, 1) (Sener & Koltun,
    NeurIPS 2018, Alg. 1; 1/2 when g1 = g2). k <= ``ENUMERATION_MAX_TASKS``: support enumeration, on support S the
    bordered system [[M_SS, -1], [1^T, 0]] [alpha_S; lambda] = [0; 1] (the optimum is a combination of affinely
    independent rows, whose system is regular). Larger k: :func:`simplex_interior_point` on 1/2 alpha^T M alpha.
    M is divided by its mean diagonal first (the solution does not depend on the scale of G).
    """
    k = gram.shape[0]
    if k == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    if k == 2:
        weight_of_second = min_norm_two_points(gram[0, 0], gram[0, 1], gram[1, 1])
        tie = (gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]) <= 0
        weight_of_second = torch.where(tie, torch.full_like(weight_of_second, 0.5), weight_of_second)
        return torch.stack([1 - weight_of_second, weight_of_second])
    scaled, _ = normalized_gramian(gram)
    if k <= ENUMERATION_MAX_TASKS:
        rhs = torch.zeros(k + 1, 1, dtype=scaled.dtype, device=scaled.device)
        rhs[k] = 1.0
        candidates = solve_on_supports(bordered(scaled), rhs, bordered_supports(k, scaled.device))[:, :k, 0]
        candidates = candidates / candidates.sum(-1, keepdim=True)  # on the simplex despite rounding
        return best_feasible(candidates, ((candidates @ scaled) * candidates).sum(-1))
    return simplex_interior_point(lambda w: 0.5 * ((w @ scaled) * w).sum(-1), lambda w: (scaled @ w, scaled),
                                  k, gram, iterations)


def project_onto_simplex(values: Tensor, active: Tensor | None = None) -> Tensor:
    """The Euclidean projection of the ``active`` entries of ``values`` (``(k,)``, default all) onto the simplex
    {w >= 0, sum w = 1}, 0 for the other entries (all 0 when none is active).

    Sort the active values decreasingly (u), take the largest rho with u_rho - (sum_{j <= rho} u_j - 1) / rho > 0,
    and subtract theta = (sum_{j <= rho} u_j - 1) / rho, clipping at 0 (Held, Wolfe & Crowder 1974; Duchi et al.,
    ICML 2008). The condition holds exactly for rho = 1..rho*, so rho* is the count of indices where it holds. No
    host synchronisation.
    """
    if active is None:
        active = torch.ones_like(values, dtype=torch.bool)
    ordered, _ = torch.sort(torch.where(active, values, float("-inf")), descending=True)
    ranks = torch.arange(1, values.shape[0] + 1, device=values.device, dtype=values.dtype)
    counted = ranks <= active.sum()
    thresholds = (torch.cumsum(torch.where(counted, ordered, 0.0), 0) - 1.0) / ranks
    support = ((ordered > thresholds) & counted).sum()
    theta = thresholds.gather(0, (support - 1).clamp_min(0).view(1))
    return torch.where(active, (values - theta).clamp_min(0.0), 0.0)


def softmax_over(values: Tensor, active: Tensor) -> Tensor:
    """softmax of the ``active`` entries of ``values`` (0 elsewhere; all 0 when none is active)."""
    shift = torch.where(active, values, float("-inf")).amax()
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    return share_over_active(torch.exp(torch.where(active, values - shift, 0.0)), active)
