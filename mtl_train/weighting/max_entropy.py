"""Maximum-entropy weighting: weight each task by how uncertain its current predictions are.

    H_i = mean over the batch (and any spatial positions) of  -sum_c p_c log p_c,   p = softmax(output_i, dim=1)
    w_i = (H_i + eps) / sum_j (H_j + eps)          (natural log; the weights SUM TO 1)
    L   = sum_i w_i L_i                             (w detached: no gradient flows through the entropies)

Tasks whose predicted distributions are flatter (higher entropy, less confident) get a larger share of the loss.
Worked example: predicted distributions [0.7, 0.3] (H = 0.6109) and [0.9, 0.1] (H = 0.3251) give weights
0.6527 / 0.3473. ``eps`` (default 1e-8) keeps the weights defined when every task is fully confident (all
H = 0 gives uniform weights 1/k). A task whose loss is exactly 0 (switched off by the training schedule) gets
weight 0, and the active tasks' weights are normalised to sum to 1 among themselves.

Only for tasks whose outputs hold class logits along dim 1 (classification, segmentation), as flagged by
``StepContext.class_logits`` (from each task's metric, ``TaskMetric.class_logits``). The trainer builds a
weighting knowing only task names, so a value-predicting task (regression, reconstruction) is detected and
rejected with a :class:`~mtl_train.errors.ConfigError` at the first step. Costs one softmax per task per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, share_over_active


def mean_entropy(logits: Tensor) -> Tensor:
    """Mean (over the batch and any spatial positions) entropy, in nats, of ``softmax(logits, dim=1)``."""
    log_p = torch.log_softmax(logits.detach().float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


class MaxEntropyWeighting(Weighting):
    """w_i proportional to the mean predictive entropy of task i, normalised to sum to 1."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8) -> None:
        super().__init__(task_names)
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0 (it keeps the weights defined), got {eps}; the default is 1e-8")
        self.eps = float(eps)

    def _check_outputs(self, ctx: StepContext) -> None:
        missing = [t for t in self.task_names if t not in ctx.outputs or t not in ctx.class_logits]
        if missing:
            raise RuntimeError(
                f"weighting=max_entropy needs StepContext.outputs and StepContext.class_logits for every task; "
                f"the trainer did not provide them for {missing}"
            )
        for task in self.task_names:
            if not ctx.class_logits[task]:
                raise ConfigError(
                    f"weighting=max_entropy needs class-logit outputs; task {task!r} predicts values — use a task "
                    "set of classification/segmentation tasks, e.g. task=cls_seg, or another weighting"
                )

    def entropy_weights(self, ctx: StepContext, active: Tensor) -> Tensor:
        """The ``(k,)`` detached weights for this step's outputs (sum to 1 over the ``active`` tasks, 0 for the
        others)."""
        self._check_outputs(ctx)
        entropies = torch.stack([mean_entropy(ctx.outputs[t]) for t in self.task_names]) + self.eps
        return share_over_active(entropies.to(active.device), active)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = self.entropy_weights(ctx, active_tasks(losses)).to(dtype=losses.dtype)
        ctx.scale((weights * losses).sum()).backward()
        return weights
