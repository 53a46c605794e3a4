"""PCD (Priority-Constrained Descent): Varam & AlHajri, "Not All Objectives Are Born Equal: Priority-Constrained
Descent for Hierarchical Multi-Objective Optimization", TMLR 2026 (arXiv 2606.29521).

One task is the **primary** (``primary``, default the first task); the update follows it as closely as possible while
every other task (a secondary) keeps a minimum rate of descent. With the rows normalised by a running estimate of
their norms (Def. 4.5: an EMA v_i <- beta v_i + (1 - beta) ||g_i||^2 with bias correction v^_i = v_i / (1 - beta^t),
s_i = 1 / sqrt(v^_i + eps), g~_i = s_i g_i), the QP (Def. 4.1)

    d~ = argmin_d 1/2 ||d - g~_p||^2   s.t.   g~_j . d >= tau_j ||g~_j||^2   for every secondary j

has the solution d~ = g~_p + sum_j mu_j g~_j with multipliers mu >= 0 (Thm. 4.2). The update is d~ rescaled to the
primary's norm, d = d~ ||g_p|| / ||d~|| (0 when d~ = 0), so the reported weights are
w_p = s_p ||g_p|| / ||d~|| and w_j = mu_j s_j ||g_p|| / ||d~||. The method is deliberately not symmetric in the tasks.

Special cases: when g~_p already satisfies every constraint, d = g_p; when the constraints cannot all hold (only
possible with two secondaries or more, e.g. two opposite ones) they are dropped and d = g_p; a zero primary gradient
gives d = 0. A secondary opposite to the primary (k = 2) reverses it: mu = 1 + tau and d = -g_p.

Solver: the QP's dual, min_{mu >= 0} 1/2 mu^T M~_SS mu + (M~_Sp - tau diag(M~_SS))^T mu over the Gramian M~ of the
g~ (secondaries S), by :func:`mtl_train.weighting.upgrad.nonnegative_qp` (exact support enumeration up to 8
secondaries, an interior point with an active-set polish above) with a ridge of 1e-12 times the mean diagonal, which
keeps the problem bounded when the constraints conflict; d~ is then checked against the constraints (relative
tolerance 1e-9) and the constraints dropped where it misses them. The reference code enumerates working sets, torchjd
uses a dual active-set method: the same minimiser. On the device, no host synchronisation.

Defaults (the reference code and torchjd agree): tau = 0.02 (one value, or one per secondary in task order), beta =
0.999, eps = 1e-8 inside the square root. On the first step v^_i = ||g_i||^2, so every row is normalised exactly.
State: v and the step counts t, per task (checkpointed).

``mode=rep`` works on the Gramian of the gradients w.r.t. z (as torchjd's aggregator does on any matrix).

A task whose loss is exactly 0 (switched off by the training schedule) has a zero gradient: as a secondary its
constraint holds trivially and it gets weight 0; its norm EMA and step count do not move (so the bias correction
counts its active steps). When the primary is inactive the update is 0 (PCD's update has the primary's norm), so a
schedule that switches the primary off leaves the shared part untrained in those steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.solvers import gramian
from mtl_train.weighting.upgrad import nonnegative_qp

#: Ridge of the dual QP, relative to the mean diagonal of the secondaries' normalised Gramian.
RIDGE = 1e-12
#: Relative tolerance of the constraint check on d~.
FEASIBILITY_TOLERANCE = 1e-9


def pcd_coefficients(gram: Tensor, primary: int, tau: Tensor) -> Tensor:
    """c (k,) with d~ = c @ G~ for the normalised Gramian ``gram`` = G~ G~^T (k, k), float64: c_primary = 1, c_j =
    mu_j for the secondaries; c = e_primary when the constraints g~_j . d >= tau_j ||g~_j||^2 (``tau`` (k,), its
    primary entry unused) cannot all hold."""
    k = gram.shape[0]
    unit = (torch.arange(k, device=gram.device) == primary).to(gram.dtype)
    if k == 1:
        return unit
    positions = torch.arange(k - 1, device=gram.device)
    secondary = positions + (positions >= primary).long()  # every task but the primary (no host-to-device copy)
    block = gram.index_select(0, secondary).index_select(1, secondary)
    diagonal = block.diagonal()
    ridge = RIDGE * diagonal.mean().clamp_min(torch.finfo(gram.dtype).tiny)
    linear = gram[secondary, primary] - tau.index_select(0, secondary) * diagonal
    multipliers = nonnegative_qp(block + ridge * torch.eye(k - 1, dtype=gram.dtype, device=gram.device),
                                 linear.unsqueeze(0))[0]
    coefficients = unit.index_put((secondary,), multipliers)
    slack = (gram @ coefficients - tau * gram.diagonal()).index_select(0, secondary)
    tolerance = FEASIBILITY_TOLERANCE * gram.diagonal().amax().clamp_min(torch.finfo(gram.dtype).tiny)
    return torch.where((slack >= -tolerance).all(), coefficients, unit)


def pcd_weights(gram: Tensor, scales: Tensor, primary: int, tau: Tensor) -> Tensor:
    """The weights w (k,) of the update d = w @ G from the Gramian ``gram`` = G G^T of the raw rows and the
    normalisation ``scales`` s (g~_i = s_i g_i): the QP's d~ rescaled to the primary's norm (0 when d~ = 0)."""
    normalised = gram * torch.outer(scales, scales)
    coefficients = pcd_coefficients(normalised, primary, tau)
    length = (coefficients @ normalised @ coefficients).clamp_min(0.0).sqrt()
    target = gram[primary, primary].clamp_min(0.0).sqrt()
    factor = torch.where(length > 0, target / torch.where(length > 0, length, 1.0), 0.0)
    return coefficients * scales * factor


class PCD(GradientWeighting):
    """The update closest to the primary task's gradient that keeps every other task descending (module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        primary: str | None = None,
        tau: float | Sequence[float] = 0.02,
        beta: float = 0.999,
        eps: float = 1e-8,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if primary is not None and primary not in self.task_names:
            raise ConfigError(f"weighting.primary must be one of the tasks {self.task_names} (or null for the first), "
                              f"got {primary!r}")
        if not 0 <= beta < 1:
            raise ConfigError(f"weighting.beta must be in [0, 1) (the norm EMA's rate, e.g. 0.999), got {beta}")
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0 (it keeps 1 / sqrt(v + eps) finite, e.g. 1e-8), got {eps}")
        self.primary = self.task_names.index(primary) if primary is not None else 0
        self.beta = beta
        self.eps = eps
        self.register_buffer("tau", self._tau_in_task_order(tau), persistent=False)
        self.register_buffer("second_moments", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros(self.num_tasks, dtype=torch.long))

    def _tau_in_task_order(self, tau: float | Sequence[float]) -> Tensor:
        """``(k,)`` float64: tau of every secondary, in task order (0 at the primary, where it is unused)."""
        secondaries = self.num_tasks - 1
        values = [float(tau)] * secondaries if isinstance(tau, (int, float)) else [float(t) for t in tau]
        if len(values) != secondaries or not all(t >= 0 for t in values):
            raise ConfigError(f"weighting.tau must be a number >= 0 or a list of {secondaries} such numbers (one per "
                              f"task other than the primary, in task order), got {tau!r}")
        values.insert(self.primary, 0.0)
        return torch.tensor(values, dtype=torch.float64)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        active = active_tasks(losses)
        gram = gramian(grads)
        self.steps.add_(active.long())
        moments = self.beta * self.second_moments + (1.0 - self.beta) * gram.diagonal().clamp_min(0.0)
        self.second_moments.copy_(torch.where(active, moments, self.second_moments))
        corrected = torch.where(self.steps > 0, self.second_moments / (1.0 - self.beta**self.steps.double()), 0.0)
        scales = torch.rsqrt(corrected + self.eps)
        weights = torch.where(active, pcd_weights(gram, scales, self.primary, self.tau), 0.0)
        return weighted_sum(grads, weights.to(grads.dtype))
