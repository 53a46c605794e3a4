"""IMTL: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021.

The hybrid method (as LibMTL's ``IMTL``) combines

* **IMTL-L** on the losses: each task has a learnable log-scale s_t (init 0) and its loss becomes
  L^_t = e^{s_t} L_t - s_t. The s_t are trained by the trainer's optimizer (:meth:`optimizer_groups`, learning rate
  ``lr``, default the optimizer's, as LibMTL); their gradient is d L^_t / d s_t = e^{s_t} L_t - 1 (minimising over s
  gives s_t = -log L_t, i.e. a log loss).
* **IMTL-G** on the gradients g_t of the L^_t: the update d = sum_t alpha_t g_t whose projections onto every unit
  gradient u_t = g_t / ||g_t|| are equal. In closed form, with D = [g_1 - g_2, ..., g_1 - g_k]^T and
  U = [u_1 - u_2, ..., u_1 - u_k]^T: alpha_{2:k} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum_{t>=2} alpha_t
  (alpha sums to 1 and may be negative). Everything is a k x k expression in the Gramian M = G G^T
  (:func:`imtl_g_weights`): D = A G and U = B G with A, B the (k-1) x k difference operators, so D U^T = A M B^T and
  g_1 U^T = (M B^T)[0]. If D U^T is singular, 1e-8 I is added (as Nash-MTL's ``imtl``), decided on the device
  without a host sync; zero gradients get u_t = 0.

``loss_balance = false`` gives IMTL-G alone (Nash-MTL's ``imtl``): no s, the raw losses.

How it plugs into the trainer: :meth:`IMTL.backward` gives every s_t its gradient from
sum_t (e^{s_t} L_t - s_t) (with the losses detached, so nothing else is touched), then runs the usual
:class:`GradientWeighting` step on the transformed losses with s detached: the shared part gets
alpha @ G, task-specific parameters get the gradient of their own L^_t. It returns the effective weights on the
*raw* losses' gradients, alpha_t e^{s_t} (``aggregate`` itself returns alpha, the weights of the rows it is given).
Default ``mode = "params"`` (LibMTL also allows the representation, ``mode = "rep"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian

SINGULAR_RIDGE = 1e-8


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G's ``(k,)`` weights alpha (sum 1) from the Gramian M (k x k) of the task gradients."""
    k = gram.shape[0]
    if k == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    norms = gram.diagonal().clamp_min(0).sqrt()
    inverse_norms = torch.where(norms > 0, 1 / norms.clamp_min(1e-300), torch.zeros_like(norms))
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    differences = eye[:1] - eye[1:]                      # A: row t-1 = e_1 - e_t, so D = A G
    unit_differences = differences * inverse_norms       # B: row t-1 = e_1/||g_1|| - e_t/||g_t||, so U = B G
    gram_ut = gram @ unit_differences.T                  # M B^T; row 0 = g_1 U^T
    system = differences @ gram_ut                       # D U^T = A M B^T, (k-1) x (k-1)
    # alpha_{2:k} (D U^T) = g_1 U^T  <=>  (D U^T)^T alpha_{2:k}^T = (g_1 U^T)^T
    solution, info = torch.linalg.solve_ex(system.T, gram_ut[0])
    ridged, _ = torch.linalg.solve_ex(system.T + SINGULAR_RIDGE * eye[1:, 1:], gram_ut[0])
    singular = (info != 0) | ~torch.isfinite(solution).all()
    rest = torch.where(singular, ridged, solution)
    return torch.cat([1 - rest.sum().unsqueeze(0), rest])


class IMTL(GradientWeighting):
    """Impartial multi-task learning, IMTL-L + IMTL-G (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        loss_balance: bool = True,
        mode: str = "params",
        jacobian: str = "auto",
        lr: float | None = None,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, lr=lr)
        if not isinstance(loss_balance, bool):
            raise ConfigError(f"weighting.loss_balance must be true or false, got {loss_balance!r}")
        self.loss_balance = loss_balance
        self.log_scales = nn.Parameter(torch.zeros(len(self.task_names))) if loss_balance else None

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        return weighted_sum(grads, imtl_g_weights(gramian(grads)).to(grads.dtype))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        if self.log_scales is None:
            return super().backward(losses, ctx)
        s = self.log_scales
        ctx.scale((s.exp() * losses.detach() - s).sum()).backward(inputs=[s])
        scales = s.detach().exp()
        alpha = super().backward(scales * losses - s.detach(), ctx)
        return alpha * scales.to(alpha)
