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
heads to the shared representation z, then through the trunk from z down to W. With ``"shared"`` those k trunk
passes already give every shared parameter's gradient G (rows: the unweighted losses), so the update needs no
further backward: the shared parameters get w @ G and each task's own parameters w_i times the gradient of L_i
from its head backward. With the last shared layer, one backward of sum_i w_i L_i follows.

Training schedules (:mod:`mtl_train.schedules`): a task switched off in a step has loss exactly 0 there. Only the
active tasks (loss != 0) enter Gbar, the mean loss ratio and L_grad; an inactive task's applied weight is 0, its
learned weight gets no gradient and keeps its value through the step, and the active weights are renormalised to sum
to their count. L_i(0) is task i's loss at its first active step, so a task that starts later gets its own reference
loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, normalise_over_active
from mtl_train.weighting.gradient_based import assign_flat_gradient
from mtl_train.weighting.gradients import TrunkJacobian, add_gradients, representation_gradients


def gradnorm_loss(weights: Tensor, grads: Tensor, loss_ratios: Tensor, alpha: float,
                  active: Tensor | None = None) -> Tensor:
    """GradNorm's L_grad for ``(k,)`` weights and a ``(k, d)`` matrix of per-task gradients of the *unweighted*
    losses w.r.t. W, given ``loss_ratios`` L_i(t)/L_i(0). Differentiable in ``weights`` only.

    ``active`` (``(k,)`` bool, default all) selects the tasks that train this step: Gbar, the mean loss ratio and the
    sum run over them only, and the other tasks' weights get no gradient (their ratios are not read)."""
    if active is None:
        active = torch.ones_like(loss_ratios, dtype=torch.bool)
    count = active.sum().clamp_min(1)
    weighted_norms = weights * grads.detach().norm(dim=1)
    ratios = torch.where(active, loss_ratios, 0.0)
    mean_ratio = ratios.sum() / count
    relative_rates = torch.where(active, ratios / torch.where(mean_ratio > 0, mean_ratio, 1.0), 0.0)
    mean_norm = torch.where(active, weighted_norms, 0.0).sum() / count
    target = (mean_norm * relative_rates.pow(alpha)).detach()
    return torch.where(active, (weighted_norms - target).abs(), 0.0).sum()


class GradNorm(Weighting):
    """Weights learned so that every task trains at a similar rate (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.5,
        lr: float | None = 0.025,
        gradient_params: str = "last_shared_layer",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
    ) -> None:
        super().__init__(task_names, lr=lr)
        if not alpha >= 0:
            raise ConfigError(f"weighting.alpha must be >= 0, got {alpha}")
        if gradient_params not in ("last_shared_layer", "shared"):
            raise ConfigError(f"weighting.gradient_params must be 'last_shared_layer' or 'shared', "
                              f"got {gradient_params!r}")
        self.alpha = alpha
        self.gradient_params = gradient_params
        self.trunk_jacobian = TrunkJacobian(jacobian, jacobian_chunk)
        k = len(self.task_names)
        self.weights = nn.Parameter(torch.ones(k))
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("has_initial_losses", torch.zeros(k, dtype=torch.bool))  # per task: L_i(0) recorded
        self._active: Tensor | None = None  # this step's active tasks, and the weights before its optimizer step
        self._weights_before_step: Tensor | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Checkpoints written before the flag was per task hold one flag for all tasks, and L_i(0) = 0 for a task
        that was switched off at the first step: such a task counts as not recorded yet."""
        flag, initial = state_dict.get(prefix + "has_initial_losses"), state_dict.get(prefix + "initial_losses")
        if flag is not None and initial is not None and flag.dim() == 0:
            state_dict[prefix + "has_initial_losses"] = flag & (initial != 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def record_initial_losses(self, losses: Tensor, active: Tensor) -> None:
        """L_i(0) = task i's loss at its first active step (torch.where: no host synchronisation)."""
        first = active & ~self.has_initial_losses
        self.initial_losses.copy_(torch.where(first, losses, self.initial_losses))
        self.has_initial_losses.logical_or_(active)

    def loss_ratios(self, losses: Tensor, active: Tensor) -> Tensor:
        """L_i(t) / L_i(0) for the active tasks (0 for the others)."""
        recorded = active & self.has_initial_losses  # recorded at an active step, so L_i(0) != 0
        return torch.where(recorded, losses / torch.where(recorded, self.initial_losses, 1.0), 0.0)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        detached = losses.detach()
        active = active_tasks(losses)
        self.record_initial_losses(detached, active)
        z = ctx.shared_representation
        shared = self.gradient_params == "shared"
        task_parameters = [ctx.model.task_parameters(t) if shared else [] for t in self.task_names]
        rows, own = representation_gradients(ctx.scale(losses), z, task_parameters)
        params = ctx.model.shared_parameters() if shared else list(ctx.model.last_shared_layer().parameters())
        grads, _, _ = ctx.distributed.task_gradients(self.trunk_jacobian(z, params, rows), per_sample=False)
        gradnorm_loss(self.weights, grads, self.loss_ratios(detached, active), self.alpha, active).backward()
        weights = self.weights.detach().clone()
        self._active, self._weights_before_step = active, weights
        if shared:  # G holds every shared parameter's gradient: the update is w @ G, no further trunk backward
            assign_flat_gradient(params, weights.to(grads.dtype) @ grads)
            for task_params, task_grads, weight in zip(task_parameters, own, weights):
                add_gradients(task_params, task_grads, weight)
        else:
            ctx.scale((weights * losses).sum()).backward()
        return torch.where(active, weights, 0.0)

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Renormalise so that the active tasks' weights sum to their count (and keep every weight positive); a task
        switched off in this step keeps its weight from before the step."""
        if self._active is None:
            raise RuntimeError("GradNorm.after_optimizer_step was called before GradNorm.backward in this step")
        active, before = self._active, self._weights_before_step
        renormalised = normalise_over_active(self.weights.clamp(min=1e-6), active)
        self.weights.copy_(torch.where(active, renormalised, before))
        self._active = self._weights_before_step = None
