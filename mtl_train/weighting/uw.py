"""Uncertainty weighting (UW): Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018.

Each task learns a log-variance s_t = log sigma_t^2 (init 0) and the loss is
    regression form:      sum_t 0.5 * exp(-s_t) * L_t + 0.5 * s_t       (Kendall Eq. 7 with s = log sigma^2)
    classification form:  sum_t       exp(-s_t) * L_t + 0.5 * s_t       (Kendall Eq. 10, softmax temperature)
At the optimum over s: exp(s_t) = L_t (regression form) or exp(s_t) = 2 L_t (classification form).
Defaults follow the Nash-MTL / FAMO repositories: regression form for every task, s_0 = 0, lr 0.025
(the rate the GradNorm paper used for Kendall's weights).

A task whose loss is exactly 0 (switched off by the training schedule) contributes no term at all, neither its
weighted loss nor its regulariser 0.5 s_t: its log-variance gets no gradient and keeps its value while the task is
off (the regulariser alone would give s_t the gradient 1/2 every step, so the weight would drift), and its weight is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks

_LOSS_FACTOR = {"regression": 0.5, "classification": 1.0}


def uncertainty_weights(log_variances: Tensor, form: str) -> Tensor:
    """The weight multiplying each task loss: ``c * exp(-s)`` with c = 0.5 (regression) or 1 (classification)."""
    return _LOSS_FACTOR[form] * torch.exp(-log_variances)


class UncertaintyWeighting(Weighting):
    """Learned per-task log-variances; ``form`` is ``"regression"`` or ``"classification"``."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], form: str = "regression", init_log_variance: float = 0.0, lr: float | None = 0.025) -> None:
        super().__init__(task_names, lr=lr)
        if form not in _LOSS_FACTOR:
            raise ConfigError(f"weighting.form must be 'regression' or 'classification', got {form!r}")
        self.form = form
        self.log_variances = nn.Parameter(torch.full((len(self.task_names),), float(init_log_variance)))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        active = active_tasks(losses)
        weights = uncertainty_weights(self.log_variances, self.form)
        total = torch.where(active, weights * losses + 0.5 * self.log_variances, 0.0).sum()
        ctx.scale(total).backward()
        return torch.where(active, weights.detach(), 0.0)
