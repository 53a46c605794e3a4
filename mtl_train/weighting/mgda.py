"""MGDA / MGDA-UB: Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
C. R. Math. 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.

The shared update is the min-norm point of the convex hull of the task gradients,

    alpha = argmin_{alpha in simplex} || sum_t alpha_t g_t ||^2,        d = sum_t alpha_t g_t,

a common descent direction (or zero at a Pareto-stationary point). Task-specific parameters get their own
gradients. The weights alpha (sum 1) are returned.

Solver (:func:`mgda_weights`, on the Gramian M = G G^T only): k = 2 uses the closed form
alpha_1 = clip((g2 - g1)^T g2 / ||g1 - g2||^2, 0, 1); we clip to [0, 1] (exact), while Sener's code clips to
[0.001, 0.999]. 2 < k <= 8: exactly, by enumerating the supports of alpha (one batched solve of the 2^k bordered
systems [[M_SS, -1], [1^T, 0]] [alpha_S; lambda] = [0; 1], the best feasible candidate wins); larger k: a primal-dual
interior-point method on the simplex with a fixed number of ``iterations`` (default 15), which reaches the min norm to
~1e-12 (relative to the mean squared gradient norm) within 15 iterations (both in
:mod:`mtl_train.weighting.solvers`; neither synchronises with the host). (Sener's code runs up to MAX_ITER = 250
iterations of a projected-gradient variant started from the best pair, stopping at STOP_CRIT = 1e-5 with a
host-side test; LibMTL copies that; plain Frank-Wolfe is ~1e-3 off in the min norm after 250 iterations whenever the
solution lies on a face of the simplex.)

``normalization`` rescales each g_t by n_t before solving (optional, "not included in the paper"):
``none`` (n_t = 1, LibMTL's default), ``l2`` (n_t = ||g_t||), ``loss`` (n_t = L_t) or ``loss+`` (n_t = L_t ||g_t||,
the setting in Sener's sample config and Kurin et al.). As in Sener's code, alpha is solved on the normalised
gradients and then applied to the *raw* ones (his training loop backpropagates sum_t alpha_t L_t), so
d = sum_t alpha_t g_t and the reported weights are alpha. (LibMTL applies alpha to the normalised gradients in
``rep_grad=False`` mode, i.e. effective weights alpha_t / n_t.) The ``loss`` variants read the step's detached losses,
which every ``aggregate(grads, losses)`` receives. Losses are floored at 1e-12 before dividing.

Default ``mode = "rep"``: MGDA-UB, the same problem on the gradients w.r.t. the shared representation z (Sener's
upper bound; k cheap head backwards and one trunk backward); ``mode = "params"`` is plain MGDA on the shared
parameters.

Inactive tasks. A task whose loss is exactly 0 (switched off by the training schedule) has a zero gradient; left in,
that zero vector would be the min-norm point of the hull and the shared part would get no update at all. The
problem is therefore solved over the active tasks' gradients only (:func:`mgda_weights` with ``active``), and the
inactive tasks get weight 0; with one active task, d is its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian, min_norm_point

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def gradient_normalizers(gram: Tensor, normalization: str, losses: Tensor) -> Tensor:
    """The ``(k,)`` factors n_t that g_t is divided by before solving (Sener's ``gradient_normalizers``), from the
    Gramian (for the norms ||g_t|| = sqrt(M_tt)) and, for ``loss`` / ``loss+``, the task losses."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    norms = gram.diagonal().clamp_min(0).sqrt()
    if normalization == "none":
        return torch.ones_like(norms)
    if normalization == "l2":
        return norms
    losses = losses.detach().to(gram).clamp_min(1e-12)
    return losses if normalization == "loss" else losses * norms


def mgda_weights(gram: Tensor, iterations: int = 15, active: Tensor | None = None) -> Tensor:
    """The min-norm weights alpha (on the simplex) of the gradients whose Gramian is ``gram`` (k x k).

    ``active`` (``(k,)`` bool, default all) restricts the problem to those tasks; the others get weight 0 (all 0 if
    none is active). Without a host synchronisation (no data-dependent shapes), each inactive row is replaced by a
    copy of the first active task's row: the copies leave the convex hull, hence the min-norm point, that of the
    active rows, and the weight the solver gives a copy is handed back to the task it copies.
    """
    if active is None:
        return min_norm_point(gram, iterations)
    tasks = torch.arange(gram.shape[0], device=gram.device)
    source = torch.where(active, tasks, torch.argmax(active.to(torch.uint8)))  # argmax: the first active task
    copies = (source.unsqueeze(1) == tasks).to(gram.dtype)  # row t: e_{source[t]}
    alpha = min_norm_point(copies @ gram @ copies.T, iterations) @ copies
    return torch.where(active, alpha, 0.0)


class MGDA(GradientWeighting):
    """Min-norm convex combination of the task gradients (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        normalization: str = "none",
        mode: str = "rep",
        iterations: int = 15,
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"weighting.normalization must be one of {', '.join(NORMALIZATIONS)}, "
                              f"got {normalization!r}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1, got {iterations!r}")
        self.normalization = normalization
        self.iterations = iterations

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        gram = gramian(grads)
        normalizers = gradient_normalizers(gram, self.normalization, losses)
        # Gramian of the normalised rows g_t / n_t (a zero norm only happens for a zero row, which stays zero)
        safe = torch.where(normalizers > 0, normalizers, torch.ones_like(normalizers))
        alpha = mgda_weights(gram / torch.outer(safe, safe), self.iterations, active_tasks(losses))
        return weighted_sum(grads, alpha.to(grads.dtype))
