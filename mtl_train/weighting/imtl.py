"""IMTL: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021.

The hybrid method (as LibMTL's ``IMTL``) combines

* **IMTL-L** on the losses: each task has a learnable log-scale s_t (init 0) and its loss becomes
  L^_t = e^{s_t} L_t - s_t. The s_t are trained by the trainer's optimizer (:meth:`optimizer_groups`, learning rate
  ``lr``, default the optimizer's, as LibMTL); their gradient is d L^_t / d s_t = e^{s_t} L_t - 1 (minimising over s
  gives s_t = -log L_t, i.e. a log loss).
* **IMTL-G** on the gradients g_t of the L^_t: the update d = sum_t alpha_t g_t (alpha sums to 1 and may be negative)
  whose projections onto every unit gradient u_t = g_t / ||g_t|| are equal. The paper gives it in closed form,
  alpha_{2:k} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum_{t>=2} alpha_t, with D = [g_1 - g_2, ..., g_1 - g_k]^T and
  U = [u_1 - u_2, ..., u_1 - u_k]^T. Equivalently, with K = [u_t . u_s] the cosine matrix, d = sum_t c_t u_t has the
  projections K c, so c = K^{-1} 1 gives them all equal to 1, and alpha_t = (c_t / ||g_t||) / sum_s (c_s / ||g_s||);
  this is the form :func:`imtl_g_weights` computes from the Gramian M = G G^T. It also covers the cases outside the
  closed form (a zero gradient has no unit vector; dependent gradients make D U^T singular): a zero gradient (a task
  switched off by the training schedule, whose loss is exactly 0) gets weight 0 and the others get IMTL-G of
  themselves; linearly dependent gradients get c = K^+ 1, the minimum-norm least-squares solution, so the projections
  are equal wherever that is possible (e.g. two parallel gradients) and as close to equal as they can be otherwise.
  K^+ 1 comes from a Cholesky factor of K that drops every direction whose pivot is within the Gramian's rounding
  error (:func:`rank_tolerance`), with a fixed amount of work and no host synchronisation.

``loss_balance = false`` gives IMTL-G alone (Nash-MTL's ``imtl``): no s, the raw losses.

How it plugs into the trainer: :meth:`IMTL.backward` gives every s_t its gradient from
sum_t (e^{s_t} L_t - s_t) over the tasks whose loss is nonzero (with the losses detached, so nothing else is
touched; a switched-off task's s_t gets no gradient, instead of -1 per step), then runs the usual
:class:`GradientWeighting` step on the transformed losses with s detached: the shared part gets
alpha @ G, task-specific parameters get the gradient of their own L^_t. It returns the effective weights on the
*raw* losses' gradients, alpha_t e^{s_t} (``aggregate`` itself returns alpha, the weights of the rows it is given).
Default ``mode = "params"`` (LibMTL also allows the representation, ``mode = "rep"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian


def rank_tolerance(grads: Tensor) -> float:
    """The pivot below which a unit gradient counts as linearly dependent on the earlier ones: the rounding error of
    a length-d inner product in the dtype of ``grads`` (k, d), eps * sqrt(d) (in float32 at d = 1e6 that is 1.2e-4;
    the pivots of exactly dependent rows measured up to 4e-5 in magnitude), at least 1e-12."""
    return max(torch.finfo(grads.dtype).eps * math.sqrt(grads.shape[1]), 1e-12)


def truncated_cholesky(matrix: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """``(L, kept)`` for a positive semidefinite ``matrix`` (k, k) with unit or zero diagonal: Cholesky without
    pivoting, except that a column whose pivot (the squared distance of that unit vector from the span of the kept
    earlier ones) is <= ``tolerance`` is dropped (zero column, ``kept`` False), so L L^T = ``matrix`` up to the
    dropped directions. A fixed loop over the k columns, no host read."""
    k = matrix.shape[0]
    below = torch.arange(k, device=matrix.device)
    factor = torch.zeros_like(matrix)
    kept = torch.zeros(k, dtype=torch.bool, device=matrix.device)
    for j in range(k):
        residual = matrix[:, j] - factor @ factor[j]
        keep = residual[j] > tolerance
        root = torch.where(keep, residual[j], 1.0).sqrt()
        factor[:, j] = torch.where(keep & (below >= j), residual / root, 0.0)
        kept[j] = keep
    return factor, kept


def imtl_g_weights(gram: Tensor, tolerance: float = 1e-12) -> Tensor:
    """IMTL-G's ``(k,)`` weights alpha (sum 1 over the nonzero gradients, 0 for zero ones) from the Gramian M (k x k)
    of the task gradients; ``tolerance`` is :func:`truncated_cholesky`'s (see :func:`rank_tolerance`).

    With unit gradients u_t, the cosine matrix K = U U^T and d = U^T c, the projections are U d = K c; they all equal
    1 for c = K^+ 1, taken as the minimum-norm least-squares solution (exact when the u_t are independent; when not,
    the projections are equal wherever that is possible, and as close to equal as they can be elsewhere). Then
    alpha_t = c_t / ||g_t||, normalised to sum 1 (alpha = 0 when that sum is 0, e.g. all gradients zero). K^+ 1 comes
    from a truncated Cholesky factor L (K = L L^T on its kept columns): c = L (L^T L)^{-2} L^T 1."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    inverse_norms = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), 0.0)
    cosines = gram * inverse_norms.unsqueeze(0) * inverse_norms.unsqueeze(1)
    factor, kept = truncated_cholesky(cosines, tolerance)
    normal, _ = torch.linalg.cholesky_ex(factor.T @ factor + torch.diag((~kept).to(gram.dtype)))
    inner = torch.cholesky_solve(factor.sum(0).unsqueeze(-1), normal)  # (L^T L)^{-1} L^T 1 (dropped columns: 0)
    coefficients = (factor @ torch.cholesky_solve(inner, normal)).squeeze(-1)
    beta = coefficients * inverse_norms
    total = beta.sum()
    return torch.where(total != 0, beta / torch.where(total != 0, total, 1.0), 0.0)


class IMTL(GradientWeighting):
    """Impartial multi-task learning, IMTL-L + IMTL-G (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        loss_balance: bool = True,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
        lr: float | None = None,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, lr=lr,
                         weight_ema=weight_ema)
        if not isinstance(loss_balance, bool):
            raise ConfigError(f"weighting.loss_balance must be true or false, got {loss_balance!r}")
        self.loss_balance = loss_balance
        self.log_scales = nn.Parameter(torch.zeros(len(self.task_names))) if loss_balance else None

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        return weighted_sum(grads, imtl_g_weights(gramian(grads), rank_tolerance(grads)).to(grads.dtype))

    def keeps_gradients(self, wrt: str) -> bool:
        """Not with ``loss_balance`` (G is then of the scaled losses)."""
        return self.log_scales is None and super().keeps_gradients(wrt)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        if self.log_scales is None:
            return super().backward(losses, ctx)
        s = self.log_scales
        active = active_tasks(losses)  # a task switched off by the training schedule: s untouched
        ctx.scale(torch.where(active, s.exp() * losses.detach() - s, 0.0).sum()).backward(inputs=[s])
        scales = s.detach().exp()
        alpha = super().backward(scales * losses - s.detach(), ctx)
        return alpha * scales.to(alpha)
