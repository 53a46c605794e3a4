"""Loss-ratio weighting: weights from each task's loss relative to its initial loss (no gradients needed).

Aim: lower the weight of tasks whose loss is large (on its own scale), and raise the weight of tasks whose loss
falls slowly. With L_i(0) the task's initial loss and the loss ratio Lt_i = L_i(t) / L_i(0) (GradNorm's
"inverse training rate"; Chen et al., ICML 2018), the weights (detached) are

    w_i = k * (Lt_i^alpha / L_i(0)) / sum_j (Lt_j^alpha / L_j(0)),      loss = sum_i w_i L_i(t)

- 1 / L_i(0) rescales every loss by its initial value: a task whose losses are 10x larger gets a 10x smaller
  weight, whatever the units;
- Lt_i^alpha raises the weight of tasks whose loss has fallen less (larger Lt_i). Replacing Lt_i by GradNorm's
  relative rate r_i = Lt_i / mean_j Lt_j gives the same weights (the mean cancels in the normalisation);
- alpha = 0 is a fixed "divide by the initial loss" normalisation; with alpha = 1 (default)
  w_i ∝ L_i(t) / L_i(0)^2. The weights sum to the task count k, like EW's.

Worked example (k = 2): L(0) = (1, 4). At the first step Lt = (1, 1), so w ∝ (1/1, 1/4) -> w = (1.6, 0.4):
task b's larger loss gets the smaller weight. Later L(t) = (0.5, 4): task a halved, task b did not move,
Lt = (0.5, 1), w ∝ (0.5/1, 1/4) = (0.5, 0.25) -> w = (4/3, 2/3): b's weight rose from 0.4 to 2/3.

This is our own rule (no paper defines it; it combines GradNorm's loss ratios with initial-loss normalisation).
L_i(0) = the task's loss at the first step in which it is non-zero, as GradNorm takes the first-step losses; it
is kept in a buffer. A loss that is exactly 0 (a task switched off by the training schedule) gets weight 0 and is
left out of the normalisation (the weights then sum to the number of active tasks). ``eps`` (1e-8) guards the
divisions. Losses must be non-negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, normalise_over_active


def loss_ratio_weights(losses: Tensor, initial_losses: Tensor, alpha: float, eps: float = 1e-8) -> Tensor:
    """``(k,)`` weights ∝ (L/L(0))^alpha / L(0) over the non-zero losses, summing to their count; 0 for zero ones."""
    losses = losses.detach()
    active = active_tasks(losses)
    initial = initial_losses.to(losses).clamp_min(eps)
    return normalise_over_active((losses.clamp_min(0) / initial).pow(alpha) / initial, active)


class LossRatioWeighting(Weighting):
    """Weights from the loss ratios L(t)/L(0) and the initial loss scales (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], alpha: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__(task_names)
        if not alpha >= 0:
            raise ConfigError(f"weighting.alpha must be >= 0, got {alpha}")
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0, got {eps}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        k = len(self.task_names)
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("has_initial_loss", torch.zeros(k, dtype=torch.bool))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        with torch.no_grad():  # record L(0) per task at its first non-zero loss, without a host sync
            first = ~self.has_initial_loss & active_tasks(losses)
            self.initial_losses.copy_(torch.where(first, losses.detach().to(self.initial_losses), self.initial_losses))
            self.has_initial_loss.logical_or_(first)
        weights = loss_ratio_weights(losses, self.initial_losses, self.alpha, self.eps)
        ctx.scale((weights * losses).sum()).backward()
        return weights
