"""Small solvers over the k x k Gramian M = G G^T of the per-task gradients (rows of G), shared by the
gradient-combination methods.

Everything here works on tensors on the Gramian's device (no ``.cpu()``/``.numpy()``) and is written for tiny k
(2 to ~20 tasks): iterative loops run a bounded number of iterations, freeze converged iterates with
``torch.where`` masks, and synchronise with the host only once every ``check_every`` iterations (to stop early), so
a step on the GPU costs a few kernel launches per iteration and at most ``max_iter / check_every`` host syncs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Iterations between the host syncs that let a solver stop early; the iterates do not depend on it.
CHECK_EVERY = 10


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


#: line_search(w, direction, gamma_max) -> gamma in [0, gamma_max] for the step w + gamma * direction.
LineSearch = Callable[[Tensor, Tensor, Tensor], Tensor]


def frank_wolfe_simplex(
    gradient: Callable[[Tensor], Tensor],
    line_search: LineSearch,
    k: int,
    like: Tensor,
    max_iter: int = 250,
    tol: float = 1e-5,
    check_every: int = CHECK_EVERY,
) -> Tensor:
    """Minimise a convex function over the simplex {w >= 0, sum w = 1} by Frank-Wolfe with away steps.

    Starts at w = 1/k. Each iteration takes the gradient g = ``gradient(w)``, the Frank-Wolfe vertex
    s = argmin_t g_t and the away vertex a = argmax_{t: w_t > 0} g_t, and moves along whichever of
    e_s - w (step in [0, 1]) and w - e_a (step in [0, w_a / (1 - w_a)]) has the larger decrease rate, with the step
    from ``line_search`` (an exact two-point line search in the callers). It stops once a step changes w by less
    than ``tol`` in l1 norm (a "drop" step that removes a vertex from the support does not count), or after
    ``max_iter`` iterations. Away steps (Wolfe 1970; Lacoste-Julien & Jaggi, NeurIPS 2015) make the convergence
    linear when the solution lies on a face of the simplex, which is the usual case for MGDA; plain Frank-Wolfe
    zig-zags there (about 1e-3 off in the min norm after 250 iterations on random 3-task problems).

    ``like`` gives the dtype and device of w. Returns w of shape (k,).
    """
    w = torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
    done = torch.zeros((), dtype=torch.bool, device=like.device)
    indices = torch.arange(k, device=like.device)
    for iteration in range(max_iter):
        g = gradient(w)
        toward = (indices == g.argmin()).to(w.dtype) - w  # one-hot via a comparison: no host sync
        away_vertex = (indices == torch.where(w > 0, g, torch.full_like(g, -float("inf"))).argmax()).to(w.dtype)
        away = w - away_vertex
        use_away = (g @ away) < (g @ toward)  # strictly steeper descent away from a vertex
        direction = torch.where(use_away, away, toward)
        w_away = (w * away_vertex).sum()
        away_max = torch.where(w_away < 1, w_away / (1 - w_away).clamp_min(torch.finfo(w.dtype).tiny),
                               torch.zeros_like(w_away))
        gamma_max = torch.where(use_away, away_max, torch.ones_like(away_max))
        gamma = line_search(w, direction, gamma_max).clamp(min=torch.zeros_like(gamma_max), max=gamma_max)
        gamma = torch.where(done, torch.zeros_like(gamma), gamma)
        w_new = (w + gamma * direction).clamp_min(0)
        w_new = w_new / w_new.sum()
        dropped = use_away & (gamma >= gamma_max)
        done = done | (((w_new - w).abs().sum() < tol) & ~dropped)
        w = w_new
        if (iteration + 1) % check_every == 0 and bool(done):
            break
    return w


def min_norm_point(gram: Tensor, max_iter: int = 250, tol: float = 1e-5) -> Tensor:
    """alpha = argmin_{alpha in simplex} ||alpha @ G||^2 = alpha^T M alpha, the min-norm point of the convex hull
    of the rows of G, from the Gramian M (k x k).

    k = 1: alpha = (1,). k = 2: the closed form alpha_1 = clip((g2 - g1)^T g2 / ||g1 - g2||^2, 0, 1) (Sener & Koltun,
    NeurIPS 2018, Alg. 1; 1/2 when g1 = g2). k > 2: :func:`frank_wolfe_simplex` on M / (mean diag M) (the solution is
    invariant to the scale of G) with the exact line search gamma = -w^T M d / d^T M d.
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

    def line_search(w: Tensor, direction: Tensor, gamma_max: Tensor) -> Tensor:
        curvature = direction @ scaled @ direction
        slope = -(w @ scaled @ direction)
        safe = torch.where(curvature > 0, curvature, torch.ones_like(curvature))
        return torch.where(curvature > 0, slope / safe, torch.where(slope > 0, gamma_max, torch.zeros_like(slope)))

    return frank_wolfe_simplex(lambda w: scaled @ w, line_search, k, gram, max_iter=max_iter, tol=tol)
