"""ExcessMTL: He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess Risks",
ICML 2024 (arXiv 2402.02009).

Task weights alpha on the simplex follow an exponentiated-gradient ascent on the tasks' estimated *excess risks*
(how far each task is from its own optimum), so a task far from its optimum gets more weight, while a task that is
merely noisy (high loss, little left to learn) does not. The excess risk of task i is estimated by the second-order
term g_i^T H_i^-1 g_i with a diagonal H_i accumulated AdaGrad-style from the squared gradients, and divided by its
value at the start of training (scale processing) so that tasks are comparable. Per step, with G the (k, d)
gradients w.r.t. the shared parameters:

    S   <- S + G * G                                         (per task and coordinate; S = 0 at first)
    e_i  = sum_j G_ij^2 / sqrt(S_ij + eps)                   (excess-risk estimate)
    r_i  = e_i / e0_i                                        (e0_i: the baseline, see below)
    alpha <- alpha * exp(eta r) / sum(alpha * exp(eta r))    (alpha uniform at first)
    d    = sum_i alpha_i g_i

Baseline. The paper collects e0 over the first 3 epochs (its App. C.1): ``warmup_epochs: 3``, the default. During
those epochs alpha stays uniform and e0_i is the mean of e_i over the steps; from then on alpha moves. The authors'
code (and LibMTL, which copies it) takes the first step's e as e0 and moves alpha from the second step on:
``warmup_epochs: 0``.

Where the sources disagree. eta = 1e-2 (``robust_step_size``), the authors' code and LibMTL (torchjd: 1.0).
alpha sums to 1 as in the paper and torchjd; the authors' code and LibMTL keep k alpha (sum k, starting at 1 each),
which is a learning-rate factor k with SGD and none with Adam. eps = 1e-7 as all three. Task-specific parameters
get their own unweighted gradients, as with every gradient method here (LibMTL backpropagates sum_i alpha_i L_i,
which weights the heads too). Scale: after the baseline, alpha is invariant to rescaling a gradient row (e_i and
e0_i scale together); d is not.

Only ``mode: params``: S accumulates per coordinate across steps, and gradients with respect to the shared
representation are per sample, a different batch's samples each step (LibMTL's rep mode gives NaN). S (k copies of
the shared parameters) is created on the first step; the state dict carries its shape. Cost per step: the Jacobian
plus O(k d); no solver, no randomness, no host synchronisation. alpha is stored as logits (log alpha up to a
constant), so a huge ratio r cannot overflow it.

Inactive tasks and zero gradients. A task whose loss is exactly 0 (switched off by the training schedule) has weight
0; its S, logit and baseline keep their values, and alpha is the softmax of the active tasks' logits. The logits'
step is centred over the active tasks (which changes nothing while all tasks are active, softmax being
shift-invariant), so a task that was off comes back with its old weight relative to the others. A task's baseline
only collects steps where it is active with e_i > 0; a task without a baseline yet (off or with a zero gradient
through the warm-up) takes its first such step's e_i as its baseline and has r_i = 0 until then, so no division by
a zero baseline can occur (in LibMTL a gradient that is zero at the first step makes every weight NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import softmax_over


def excess_risks(squared_sums: Tensor, grads: Tensor, eps: float = 1e-7) -> Tensor:
    """e_i = sum_j G_ij^2 / sqrt(S_ij + eps), from the accumulated squared gradients S (already including this step's)
    and the step's gradients G, both (k, d)."""
    return (grads * grads / torch.sqrt(squared_sums + eps)).sum(1)


def centred_over(values: Tensor, active: Tensor) -> Tensor:
    """``values`` minus their mean over the ``active`` entries, 0 on the others."""
    mean = torch.where(active, values, 0.0).sum() / active.sum().clamp_min(1)
    return torch.where(active, values - mean, 0.0)


class ExcessMTL(GradientWeighting):
    """Exponentiated-gradient weights on the estimated excess risks (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        robust_step_size: float = 1e-2,
        warmup_epochs: int = 3,
        eps: float = 1e-7,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        if mode != "params":
            raise ConfigError(f"weighting.mode must be 'params' for ExcessMTL (it accumulates squared gradients per "
                              f"coordinate across steps; gradients w.r.t. the shared representation are per sample), "
                              f"got {mode!r}")
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not robust_step_size > 0:
            raise ConfigError(f"weighting.robust_step_size must be > 0, got {robust_step_size}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ConfigError(f"weighting.warmup_epochs must be an integer >= 0 (0: the first step gives the baseline, "
                              f"as the authors' code), got {warmup_epochs!r}")
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0 (it keeps sqrt(S + eps) nonzero), got {eps}")
        self.robust_step_size = float(robust_step_size)
        self.warmup_epochs = warmup_epochs
        self.eps = float(eps)
        self.epoch = 0  # the current step's epoch, from StepContext (aggregate alone: epoch 0)
        k = self.num_tasks
        self.register_buffer("squared_sums", torch.zeros(0))  # S (k, d) once the first step has run
        self.register_buffer("logits", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("baseline_sums", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("baseline_counts", torch.zeros(k, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Give the lazily-shaped S the checkpoint's shape before the ordinary load copies into it."""
        saved = state_dict.get(prefix + "squared_sums")
        if saved is not None and saved.shape != self.squared_sums.shape:
            self.squared_sums = torch.zeros(saved.shape, dtype=saved.dtype, device=self.squared_sums.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        self.epoch = ctx.epoch
        return super().backward(losses, ctx)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        if self.squared_sums.numel() == 0:
            self.squared_sums = torch.zeros_like(grads)
        elif self.squared_sums.shape != grads.shape:
            raise RuntimeError(f"ExcessMTL's squared-gradient sums have shape {tuple(self.squared_sums.shape)} but "
                               f"this step's gradients have {tuple(grads.shape)}; the shared parameters changed")
        active = active_tasks(losses)
        self.squared_sums.copy_(torch.where(active.unsqueeze(1), self.squared_sums + grads * grads,
                                            self.squared_sums))
        risks = excess_risks(self.squared_sums, grads, self.eps).to(torch.float64)
        collects = active & (risks > 0)
        has_baseline = self.baseline_counts > 0
        if self.epoch < self.warmup_epochs:
            ratios = torch.zeros_like(risks)
        else:
            baseline = self.baseline_sums / self.baseline_counts.clamp_min(1)
            ratios = torch.where(collects & has_baseline, risks / torch.where(has_baseline, baseline, 1.0), 0.0)
            collects = collects & ~has_baseline  # after the warm-up only tasks still without a baseline collect
        self.baseline_sums += torch.where(collects, risks, 0.0)
        self.baseline_counts += collects.long()
        step = centred_over(self.robust_step_size * ratios, active)
        self.logits += step.to(self.logits.dtype)
        weights = softmax_over(self.logits, active)
        return weighted_sum(grads, weights.to(grads.dtype))
