"""Random Loss Weighting (RLW): Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022 (arXiv 2111.10603).

Every step draws fresh weights lambda on the simplex and uses the loss sum_t lambda_t L_t:

    distribution = normal:     lambda = softmax(eps), eps ~ N(0, I_k)      (default)
    distribution = dirichlet:  lambda ~ Dirichlet(1, ..., 1)                (uniform on the simplex, Kurin et al. 2022)

Scale: the weights sum to 1, as in the paper, LibMTL, Nash-MTL and torchjd ``Random``; EW's weights sum to k,
so with plain SGD RLW's effective learning rate is k times smaller (with Adam the difference is almost nil).
Defaults follow the paper / LibMTL (softmax of a standard normal). The draws come from the module's own
``torch.Generator`` (seeded by ``seed``, on the CPU, so the sequence is the same on every device); its state is
checkpointed with ``state_dict()`` (extra state), so a resumed run continues the same sequence.

A task whose loss is exactly 0 (switched off by the training schedule) gets weight 0 and the drawn weights of the
active tasks are rescaled to sum to 1: the softmax of their normal draws (``normal``) or a Dirichlet(1, ..., 1) draw
on them (``dirichlet``), the same distribution as over those tasks alone. All k values are drawn every step, so the
sequence of draws does not depend on which tasks are off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, share_over_active

DISTRIBUTIONS = ("normal", "dirichlet")


def sample_simplex_weights(k: int, distribution: str, generator: torch.Generator) -> Tensor:
    """One ``(k,)`` float32 CPU draw on the simplex; Dirichlet(1,...,1) as normalised Exponential(1) variates."""
    if distribution == "normal":
        return torch.softmax(torch.randn(k, generator=generator), dim=0)
    exponentials = torch.empty(k).exponential_(1.0, generator=generator)
    return exponentials / exponentials.sum()


class RandomLossWeighting(Weighting):
    """Random weights on the simplex, redrawn every step (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], distribution: str = "normal", seed: int = 0) -> None:
        super().__init__(task_names)
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"weighting.distribution must be 'normal' or 'dirichlet', got {distribution!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"weighting.seed must be an integer, got {seed!r}")
        self.distribution = distribution
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = sample_simplex_weights(self.num_tasks, self.distribution, self.generator)
        if losses.device.type == "cuda":
            # pinned + non_blocking: the host-to-device copy does not wait for the queued GPU work
            weights = weights.pin_memory().to(losses.device, non_blocking=True)
        weights = share_over_active(weights.to(device=losses.device, dtype=losses.dtype), active_tasks(losses))
        ctx.scale((weights * losses).sum()).backward()
        return weights

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
