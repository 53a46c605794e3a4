"""GradVac (Gradient Vaccine): Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR 2021.

For every task i, starting from g_i^PC = g_i, and every other task j in a random order: with
phi_ij = cos(g_i^PC, g_j) and the target phi^_ij, if phi_ij < phi^_ij

    g_i^PC <- g_i^PC + g_j * ||g_i^PC|| (phi^_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi^_ij^2))
                                      / (||g_j|| sqrt(1 - phi^_ij^2)),

which sets cos(g_i^PC, g_j) to exactly phi^_ij (with phi^_ij = 0 it is PCGrad's projection). The target is an EMA of
the observed similarities, phi^_ij <- (1 - beta) phi^_ij + beta phi_ij, with phi^ = 0 at the start. The update is
sum_i g_i^PC (projections always onto the original g_j).

Implementation: every g_i^PC is tracked as coefficients over the rows of G (g_i^PC = C_i @ G, C = I at the start),
so everything needs only the Gramian G G^T (:func:`gradvac_weights`, float64, on the gradients' device, no host
synchronisation: the comparisons are masks). The rows i are independent, so the k chains run in parallel, k - 1
batched steps. The weights are sum_i C_i (d = weights @ G). Pair orders come from a module-owned torch.Generator
(CPU, seeded by ``seed``, its state checkpointed with the method).

Defaults and sources. Whole-model granularity (one phi^ per task pair; the paper and LibMTL also offer per-layer
and per-matrix groups, not implemented here). beta = 0.5 follows LibMTL and the Aligned-MTL repository; the paper's
own value is unverified (possibly 1e-2). ``ema_update="always"`` updates phi^ for every visited pair, as Eq. 3 and
Algorithm 1 of the paper read (from memory, unverified); ``"on_adjust"`` updates it only when the pair was
adjusted, as LibMTL and the Aligned-MTL repository do (their EMA line sits inside the ``if``; phi^ can then only
decrease from 0, so targets stay <= 0). LibMTL's 1e-8 guards in both denominators are kept.

A task whose loss is exactly 0 (switched off by the training schedule) has a zero gradient and no cosine with any
other: its pairs are neither adjusted nor do their targets move (an observed cosine of 0 would otherwise pull phi^
towards 0 while the task is off, and a positive target would give a huge step along the zero row), and its weight
is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting

EMA_UPDATES = ("always", "on_adjust")


def random_pair_order(k: int, generator: torch.Generator | None = None) -> Tensor:
    """A ``(k, k-1)`` long tensor (CPU) whose row i is a random permutation of the tasks j != i."""
    keys = torch.rand(k, k, generator=generator)
    keys.fill_diagonal_(2.0)  # sorts last
    return torch.argsort(keys, dim=1)[:, : k - 1]


def gradvac_weights(gram: Tensor, targets: Tensor, order: Tensor, beta: float, ema_update: str = "always",
                    eps: float = 1e-8, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One GradVac step on the Gramian ``gram = G G^T`` (k, k): returns ``(weights, new_targets)`` with
    ``weights @ G = sum_i g_i^PC`` and the updated EMA targets phi^ (k, k). ``order`` (k, k-1) gives, per row i, the
    order in which the other tasks are visited (see :func:`random_pair_order`). Only pairs of ``active`` tasks
    (``(k,)`` bool, default all) are adjusted and update their target; the other tasks get weight 0. Float64
    inside; returns the dtypes of ``gram`` and ``targets``."""
    if ema_update not in EMA_UPDATES:
        raise ValueError(f"ema_update must be one of {EMA_UPDATES}, got {ema_update!r}")
    k = gram.shape[0]
    if active is None:
        active = torch.ones(k, dtype=torch.bool, device=gram.device)
    matrix = gram.detach().to(torch.float64)
    phi_hat = targets.detach().to(matrix)
    order = order.to(matrix.device, non_blocking=True)
    rows = torch.arange(k, device=matrix.device)
    coefficients = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    norms = torch.sqrt(torch.diagonal(matrix).clamp_min(0.0))
    for position in range(k - 1):
        j = order[:, position]
        dots = (coefficients * matrix.index_select(0, j)).sum(1)  # <g_i^PC, g_j>
        pc_norms = torch.sqrt(((coefficients @ matrix) * coefficients).sum(1).clamp_min(0.0))
        norms_j = norms.index_select(0, j)
        phi = dots / (pc_norms * norms_j + eps)
        target = phi_hat[rows, j]
        both_active = active & active.index_select(0, j)
        adjust = (phi < target) & both_active
        root_phi = torch.sqrt((1.0 - phi**2).clamp_min(0.0))
        root_target = torch.sqrt((1.0 - target**2).clamp_min(0.0))
        step = pc_norms * (target * root_phi - phi * root_target) / (norms_j * root_target + eps)
        step = torch.where(adjust, step, torch.zeros_like(step))
        coefficients = coefficients.index_put((rows, j), step, accumulate=True)
        updated = (1.0 - beta) * target + beta * phi
        follows = adjust if ema_update == "on_adjust" else both_active  # the pairs whose target takes the EMA step
        phi_hat = phi_hat.index_put((rows, j), torch.where(follows, updated, target))
    weights = torch.where(active, coefficients.sum(0), 0.0)
    return weights.to(gram.dtype), phi_hat.to(targets.dtype)


class GradVac(GradientWeighting):
    """Gradient Vaccine with EMA similarity targets, whole-model granularity (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.5,
        ema_update: str = "always",
        seed: int = 0,
        eps: float = 1e-8,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not 0 <= beta <= 1:
            raise ConfigError(f"weighting.beta must be in [0, 1], got {beta}")
        if ema_update not in EMA_UPDATES:
            raise ConfigError(f"weighting.ema_update must be one of {list(EMA_UPDATES)}, got {ema_update!r}")
        if not eps >= 0:
            raise ConfigError(f"weighting.eps must be >= 0, got {eps}")
        self.beta = beta
        self.ema_update = ema_update
        self.eps = eps
        self.generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("targets", torch.zeros(self.num_tasks, self.num_tasks))  # phi^_ij, EMA of cosines

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        order = random_pair_order(self.num_tasks, self.generator)
        weights, targets = gradvac_weights(grads @ grads.T, self.targets, order, self.beta, self.ema_update, self.eps,
                                           active_tasks(losses))
        self.targets.copy_(targets)
        return Aggregation(weights @ grads, weights)
