"""ConFIG (Conflict-Free Inverse Gradients): Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics
Informed Neural Networks", ICLR 2025 (arXiv 2408.11104), Eq. 2 (authors' package ``conflictfree``; torchjd ``ConFIG``).

With the unit gradients u_i = g_i / ||g_i|| (rows of U, k x d; a zero gradient has u_i = 0) the update is

    b = U^+ 1,    b^ = b / ||b||,    d = (sum_i g_i . b^) b^,

i.e. the direction whose cosine with every task gradient is the same (U b = 1 in the least-squares sense, b of
minimum norm), with the length of the sum of the gradients' projections onto it. When the u_i are independent all
cosines are equal and positive, so d conflicts with no task; the direction does not depend on the gradients' norms
(only the length does). k = 1 gives d = g; two anti-parallel gradients give d = 0; a zero gradient drops out (its
equation 0 . b = 1 cannot hold; the others are solved among themselves).

Computation, on the Gramian M = G G^T only (no SVD, no host synchronisation): U^+ = U^T (U U^T)^+, so b = U^T c with
c = K^+ 1 and K = U U^T the cosine matrix. K^+ 1 comes from a Cholesky factor of K that drops the directions whose
pivot is within rounding error (:func:`mtl_train.weighting.imtl.truncated_cholesky`, as IMTL-G, whose direction this
is: both equalise the cosines). Then ||b||^2 = c^T K c, g_i . b = ||g_i|| (K c)_i, and d = sum_j w_j g_j with the
effective weights

    w_j = (sum_i ||g_i|| (K c)_i) c_j / (||b||^2 ||g_j||)     (0 for a zero gradient; all 0 when b = 0).

The authors solve U b = 1 with ``torch.linalg.lstsq`` and torchjd with a pseudo-inverse; both give this b for
independent gradients. Not included: the authors' two-task closed form, other length rules and the momentum variant
(M-ConFIG). A task whose loss is exactly 0 (switched off by the training schedule) has a zero gradient: weight 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.imtl import rank_tolerance, truncated_cholesky
from mtl_train.weighting.solvers import gramian


def pseudo_inverse_solve(matrix: Tensor, rhs: Tensor, tolerance: float) -> Tensor:
    """``matrix^+ rhs`` for a positive semidefinite ``matrix`` (k, k) with unit or zero diagonal: with the truncated
    Cholesky factor L (``matrix`` = L L^T on its kept columns), ``L (L^T L)^{-2} L^T rhs``."""
    factor, kept = truncated_cholesky(matrix, tolerance)
    normal, _ = torch.linalg.cholesky_ex(factor.T @ factor + torch.diag((~kept).to(matrix.dtype)))
    inner = torch.cholesky_solve((factor.T @ rhs).unsqueeze(-1), normal)
    return (factor @ torch.cholesky_solve(inner, normal)).squeeze(-1)


def con_fig_weights(gram: Tensor, tolerance: float = 1e-12, active: Tensor | None = None) -> Tensor:
    """ConFIG's ``(k,)`` effective weights from the Gramian ``gram = G G^T`` (k, k): d = weights @ G (module
    docstring); ``tolerance`` is :func:`~mtl_train.weighting.imtl.truncated_cholesky`'s pivot tolerance (see
    :func:`~mtl_train.weighting.imtl.rank_tolerance`). Tasks outside ``active`` ((k,) bool, default all) get 0."""
    if active is None:
        active = torch.ones(gram.shape[0], dtype=torch.bool, device=gram.device)
    norms = gram.diagonal().clamp_min(0).sqrt()
    inverse_norms = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), 0.0)
    cosines = gram * inverse_norms.unsqueeze(0) * inverse_norms.unsqueeze(1)
    coefficients = pseudo_inverse_solve(cosines, torch.ones_like(norms), tolerance)  # b = U^T c
    cosine_products = cosines @ coefficients  # (U b)_i = u_i . b
    squared_length = coefficients @ cosine_products  # ||b||^2
    projections = norms @ cosine_products  # sum_i g_i . b = ||b|| (sum_i g_i . b^)
    scale = torch.where(squared_length > 0, projections / torch.where(squared_length > 0, squared_length, 1.0), 0.0)
    return torch.where(active, scale * coefficients * inverse_norms, 0.0)


class ConFIG(GradientWeighting):
    """The equal-cosine direction with the length of the summed projections (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        weights = con_fig_weights(gramian(grads), rank_tolerance(grads), active_tasks(losses))
        return weighted_sum(grads, weights.to(grads.dtype))
