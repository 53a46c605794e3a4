"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018.

With W the last shared layer, G_i = ||grad_W w_i L_i||, Gbar = mean_i G_i, relative inverse training rate
r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)), the weights minimise

    L_grad = sum_i | G_i - Gbar * r_i^alpha |      (the target Gbar * r_i^alpha held constant)

while the model is updated with grad of sum_i w_i L_i (w held constant). After every step the weights are
renormalised to sum to the task count k. Defaults follow the paper: alpha = 1.5 (its NYUv2 setting), w(0) = 1,
weights learned at lr 0.025, L_i(0) = the task losses of the first training step, and W = the last shared layer
(``gradient_params="last_shared_layer"``; ``"shared"`` takes the norms over every shared parameter, as LibMTL
does, at the cost of k backward passes through the trunk, batched into one where that pays: ``jacobian``, see
:mod:`mtl_train.weighting.gradients`). The per-task gradients come from the gradient engine: k backwards through the
heads to the shared representation z, then through the trunk from z down to W.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting
from mtl_train.weighting.gradients import TrunkJacobian, representation_gradients


def gradnorm_loss(weights: Tensor, grads: Tensor, loss_ratios: Tensor, alpha: float) -> Tensor:
    """GradNorm's L_grad for ``(k,)`` weights and a ``(k, d)`` matrix of per-task gradients of the *unweighted*
    losses w.r.t. W, given ``loss_ratios`` L_i(t)/L_i(0). Differentiable in ``weights`` only."""
    weighted_norms = weights * grads.detach().norm(dim=1)
    relative_rates = loss_ratios / loss_ratios.mean()
    target = (weighted_norms.mean() * relative_rates.pow(alpha)).detach()
    return (weighted_norms - target).abs().sum()


class GradNorm(Weighting):
    """Weights learned so that every task trains at a similar rate (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.5,
        lr: float | None = 0.025,
        gradient_params: str = "last_shared_layer",
        jacobian: str = "auto",
    ) -> None:
        super().__init__(task_names, lr=lr)
        if not alpha >= 0:
            raise ConfigError(f"weighting.alpha must be >= 0, got {alpha}")
        if gradient_params not in ("last_shared_layer", "shared"):
            raise ConfigError(f"weighting.gradient_params must be 'last_shared_layer' or 'shared', got {gradient_params!r}")
        self.alpha = alpha
        self.gradient_params = gradient_params
        self.trunk_jacobian = TrunkJacobian(jacobian)
        self.weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.register_buffer("initial_losses", torch.zeros(len(self.task_names)))
        self.register_buffer("has_initial_losses", torch.tensor(False))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        # L_i(0) = the first step's losses (torch.where: no host synchronisation)
        self.initial_losses.copy_(torch.where(self.has_initial_losses, self.initial_losses, losses.detach()))
        self.has_initial_losses.fill_(True)
        if self.gradient_params == "shared":
            params = ctx.model.shared_parameters()
        else:
            params = list(ctx.model.last_shared_layer().parameters())
        z = ctx.shared_representation
        rows, _ = representation_gradients(ctx.scale(losses), z, [[] for _ in self.task_names])
        grads, _, _ = ctx.distributed.task_gradients(self.trunk_jacobian(z, params, rows), per_sample=False)
        loss_ratios = losses.detach() / self.initial_losses
        gradnorm_loss(self.weights, grads, loss_ratios, self.alpha).backward()
        weights = self.weights.detach()
        ctx.scale((weights * losses).sum()).backward()
        return weights.clone()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Renormalise so that sum_i w_i = k (and keep every weight positive)."""
        self.weights.clamp_(min=1e-6)
        self.weights.mul_(self.num_tasks / self.weights.sum())
