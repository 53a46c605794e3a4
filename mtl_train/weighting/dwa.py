"""Dynamic Weight Average (DWA): Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.

With L_k(t) the average training loss of task k over epoch t, every step of epoch t uses

    lambda_k(t) = K * exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T),      w_k(t-1) = L_k(t-1) / L_k(t-2)

and the loss sum_k lambda_k(t) L_k: a task whose loss fell less over the last epoch gets a larger weight; the
weights sum to the task count K. In the first two epochs (no two epoch means yet) every weight is 1. Defaults
follow the paper and LibMTL: temperature T = 2, epoch-average losses (the Nash-MTL / SamsungLabs repositories
use a sliding 25-iteration window instead). The epoch means arrive through :meth:`after_epoch`; the last two
are kept in a buffer, so a checkpoint resumes with the same weights.

DWA sees the unscheduled epoch means: the trainer averages each task's loss before the training schedule's factors
are applied (:mod:`mtl_train.schedules`), so a task switched off for an epoch still reports its real loss there. In
a step where a task is switched off (its scheduled loss is exactly 0) its weight is 0. An epoch mean L_k(t-2) of
exactly 0 means a perfectly fitted task (e.g. a float32 cross-entropy is exactly 0 once the true class's logit leads
by about 17): it has no training rate, and its ratio w_k is taken as 1 instead of 0/0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks


def dwa_weights(previous: Tensor, before_previous: Tensor, temperature: float) -> Tensor:
    """``K * softmax(w / T)`` with ``w = previous / before_previous`` (1 where ``before_previous`` is 0: a task
    fitted perfectly)."""
    ratios = torch.where(before_previous != 0, previous / torch.where(before_previous != 0, before_previous, 1.0), 1.0)
    return len(ratios) * torch.softmax(ratios / temperature, dim=0)


class DynamicWeightAverage(Weighting):
    """Weights from the ratio of the last two epoch-average losses (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if not temperature > 0:
            raise ConfigError(f"weighting.temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        k = len(self.task_names)
        # loss_history[0] = L(t-2), loss_history[1] = L(t-1); epochs_seen counts the epoch means received.
        self.register_buffer("loss_history", torch.zeros(2, k))
        self.register_buffer("epochs_seen", torch.tensor(0, dtype=torch.long))
        self.register_buffer("weights", torch.ones(k))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = torch.where(active_tasks(losses), self.weights.to(losses.dtype), 0.0)
        ctx.scale((weights * losses).sum()).backward()
        return weights.detach()

    @torch.no_grad()
    def after_epoch(self, epoch: int, mean_losses: Tensor) -> None:
        """Shift the epoch means; from the second epoch mean on, recompute the weights for the next epoch."""
        if mean_losses.shape != (self.num_tasks,):
            raise ValueError(f"after_epoch expects {self.num_tasks} mean losses, got shape {tuple(mean_losses.shape)}")
        self.loss_history[0].copy_(self.loss_history[1])
        self.loss_history[1].copy_(mean_losses.detach())
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            self.weights.copy_(dwa_weights(self.loss_history[1], self.loss_history[0], self.temperature))
