"""Random Gradient Weighting (RGW): Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022 (arXiv 2111.10603), Algorithm 2.

Every step draws fresh weights lambda on the simplex and gives the shared part the update d = sum_i lambda_i g_i,
where g_i is task i's gradient:

    distribution = normal:     lambda = softmax(eps), eps ~ N(0, I_k)      (default; the paper, LibMTL, torchjd)
    distribution = dirichlet:  lambda ~ Dirichlet(1, ..., 1)                (uniform on the simplex)

RGW and RLW (:mod:`mtl_train.weighting.rlw`, the paper's Algorithm 1) give the shared parameters the same update for
the same lambda. They differ on the task-specific parameters: RLW backpropagates sum_i lambda_i L_i, so head i gets
lambda_i times its gradient; RGW gives every head the plain gradient of its own loss (as LibMTL's ``RGW`` and torchjd's
``Random``, which aggregate the shared Jacobian only).

Cost. The weights do not depend on the gradients, so the k per-task gradients are never formed: the k head backwards
of the gradient engine give each head its own gradient and the per-task gradients of the representation z, and one
backward of sum_i lambda_i dL_i/dz through the trunk gives d. A step therefore costs about what an RLW step costs, in
either ``mode`` (``params`` and ``rep`` give the same update). :meth:`RandomGradientWeighting.aggregate` applies the
rule to a given gradient matrix.

Scale: the weights sum to 1 (EW's sum to k). The draws come from the module's own ``torch.Generator`` (seeded by
``seed``, on the CPU, so the sequence is the same on every device); its state is checkpointed with ``state_dict()``
(extra state), so a resumed run continues the same sequence. A task whose loss is exactly 0 (switched off by the
training schedule) gets weight 0 and the active tasks' draws are rescaled to sum to 1, as in RLW; all k values are
drawn every step, so the sequence does not depend on which tasks are off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, active_tasks, share_over_active
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, unscale, weighted_sum
from mtl_train.weighting.rlw import DISTRIBUTIONS, sample_simplex_weights


class RandomGradientWeighting(GradientWeighting):
    """Random simplex weights on the per-task gradients, redrawn every step (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], distribution: str = "normal", seed: int = 0, mode: str = "params",
                 jacobian: str = "auto", jacobian_chunk: int | None = None,
                 weight_ema: float = 0.0) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"weighting.distribution must be 'normal' or 'dirichlet', got {distribution!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"weighting.seed must be an integer, got {seed!r}")
        self.distribution = distribution
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, losses: Tensor) -> Tensor:
        """This step's ``(k,)`` weights, on the device of ``losses`` (float32 at least): a fresh draw on the simplex,
        rescaled to sum 1 over the active tasks (0 for the others)."""
        weights = sample_simplex_weights(self.num_tasks, self.distribution, self.generator)
        if losses.device.type == "cuda":
            # pinned + non_blocking: the host-to-device copy does not wait for the queued GPU work
            weights = weights.pin_memory().to(losses.device, non_blocking=True)
        dtype = torch.promote_types(losses.dtype, torch.float32)
        return share_over_active(weights.to(device=losses.device, dtype=dtype), active_tasks(losses))

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        return weighted_sum(grads, self.draw(losses).to(grads.dtype))

    def keeps_gradients(self, wrt: str) -> bool:
        """No: the trunk backward runs on lambda @ G_z, never on G."""
        return False

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        """The heads get their own gradients; the shared part gets d = lambda @ G from one trunk backward of the
        lambda-weighted representation gradients (the engine's ``combine``)."""
        weights = self.smoothed_weights(self.draw(losses.detach()), active_tasks(losses))
        combined = unscale(self.task_gradients(losses, ctx, combine=weights.unsqueeze(0)), ctx.loss_scale)
        combined, own, back_factor = ctx.distributed.task_gradients(combined, per_sample=self.mode == "rep")
        self.apply_direction(ctx, combined[0, own] * (ctx.loss_scale * back_factor))
        return weights.detach()

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
