"""FAMO: Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

Logits xi (init 0), z = softmax(xi), losses offset by lower bounds l*_t (``min_losses``, default 0),
D_t = l_t - l*_t + 1e-8. Each step:

1. model loss (one backward)  L = sum_t z_t log D_t / c,  c = sum_t z_t / D_t  (z and c held constant), so the
   model gradient is sum_t w_t grad l_t with the effective weights w_t = z_t / (c D_t) (sum 1), returned;
2. after the optimizer step, the losses are evaluated again on the same batch without gradients
   (``ctx.recompute_losses``), delta_t = log D_t(before) - log D_t(after), and xi takes one step of its own
   Adam(lr, weight_decay=gamma) along grad_xi = J_softmax(xi)^T delta = z * (delta - z . delta).
   A task whose loss fell more gets its logit lowered, so tasks improve at similar log-rates.

The extra forward of step 2 (built by the trainer) computes the same function as the training forward, with the
updated parameters: the same dropout masks, and BatchNorm normalising with the batch's own statistics while leaving
its running statistics untouched. So delta measures the parameter update alone (not re-sampled dropout masks), and
BatchNorm's running statistics move once per step, as with any other method.

Defaults follow LibMTL and the FAMO repository's NYUv2 / CelebA / QM9 runs: lr 0.025, gamma 1e-3 (Cityscapes used
1e-2; ``famo.py``'s own default is 1e-2, ``weight_methods.py``'s 1e-5); min_losses 0. The repository also clips the
shared gradient to norm 1 (``trainer.grad_clip=1.0`` here). Cost: O(1) in the task count (one backward, one extra
forward). xi is not stepped by the trainer's optimizer (``optimizer_groups()`` is empty); its Adam's state is
checkpointed with ``state_dict()`` (extra state).

A loss that is exactly 0 (a task switched off by the training schedule) is left out of L and c (weight 0); otherwise
its D = 1e-8 would take almost all the weight. Its logit does not move in that step: the softmax of the logit update
runs over the active tasks, and its logit keeps its value through the Adam step. ``min_losses`` must be lower bounds
of the losses (D > 0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, share_over_active

EPS = 1e-8


def famo_loss(losses: Tensor, logits: Tensor, min_losses: Tensor) -> tuple[Tensor, Tensor]:
    """FAMO's model loss (differentiable in ``losses`` only) and its ``(k,)`` effective weights (detached).

    Zero losses (tasks switched off) are left out (all weights 0 and L = 0 when every task is off).
    """
    active = active_tasks(losses)
    z = torch.softmax(logits.detach(), dim=0).to(losses.dtype)
    gaps = torch.where(active, losses - min_losses.to(losses) + EPS, 1.0)
    c = torch.where(active, z / gaps.detach(), 0.0).sum()
    c = torch.where(c > 0, c, 1.0)
    total = torch.where(active, z * torch.log(gaps), 0.0).sum() / c
    weights = torch.where(active, z / (c * gaps.detach()), 0.0)
    return total, weights


class FAMO(Weighting):
    """Fast Adaptive Multitask Optimization (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float = 0.025,
        gamma: float = 1e-3,
        min_losses: float | Sequence[float] | Mapping[str, float] = 0.0,
    ) -> None:
        super().__init__(task_names, lr=lr)
        if not lr > 0:
            raise ConfigError(f"weighting.lr must be > 0, got {lr}")
        if not gamma >= 0:
            raise ConfigError(f"weighting.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        k = len(self.task_names)
        self.logits = nn.Parameter(torch.zeros(k))
        self.register_buffer("min_losses", torch.tensor(self._min_losses_in_task_order(min_losses), dtype=torch.float32))
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=self.gamma)
        self._previous_losses: Tensor | None = None
        self._active: Tensor | None = None

    def _min_losses_in_task_order(self, min_losses: float | Sequence[float] | Mapping[str, float]) -> list[float]:
        if isinstance(min_losses, (int, float)):
            return [float(min_losses)] * self.num_tasks
        if isinstance(min_losses, Mapping):
            unknown = sorted(set(min_losses) - set(self.task_names))
            if unknown:
                raise ConfigError(f"weighting.min_losses names unknown tasks {unknown}; the tasks are {self.task_names}")
            return [float(min_losses.get(t, 0.0)) for t in self.task_names]
        if len(min_losses) != self.num_tasks:
            raise ConfigError(
                f"weighting.min_losses has {len(min_losses)} values but there are {self.num_tasks} tasks "
                f"{self.task_names}; give one number, one per task in task order, or a mapping task -> value"
            )
        return [float(v) for v in min_losses]

    def optimizer_groups(self) -> list[dict]:
        """None: the logits are stepped by FAMO's own Adam in :meth:`after_optimizer_step`."""
        return []

    @property
    def task_weights(self) -> Tensor:
        """z = softmax(xi), the current task distribution (detached)."""
        return torch.softmax(self.logits.detach(), dim=0)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        total, weights = famo_loss(losses, self.logits, self.min_losses)
        self._previous_losses = losses.detach()
        self._active = active_tasks(losses)
        ctx.scale(total).backward()
        return weights

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Re-evaluate the losses on the same batch and take one Adam step on the logits."""
        if ctx.recompute_losses is None:
            raise RuntimeError(
                "FAMO needs StepContext.recompute_losses (the task losses re-evaluated on the same batch after the "
                "optimizer step); the trainer that called it did not provide one"
            )
        if self._previous_losses is None:
            raise RuntimeError("FAMO.after_optimizer_step was called before FAMO.backward in this step")
        with torch.no_grad():
            new_losses = ctx.recompute_losses().detach().to(self._previous_losses)
            min_losses = self.min_losses.to(self._previous_losses)
            delta = torch.log(self._previous_losses - min_losses + EPS) - torch.log(new_losses - min_losses + EPS)
            delta = torch.where(self._active, delta, 0.0).to(self.logits)
            z = share_over_active(torch.softmax(self.logits, dim=0), self._active)
            self.logits.grad = z * (delta - (z * delta).sum())  # J_softmax(xi)^T delta, over the active tasks
            before = self.logits.detach().clone()
        self.optimizer.step()
        with torch.no_grad():
            self.logits.copy_(torch.where(self._active, self.logits, before))  # not moved by momentum or decay
        self.logits.grad = None
        self._previous_losses = self._active = None

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # a copy: Optimizer.load_state_dict keeps the given tensors, which may belong to another live FAMO
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
