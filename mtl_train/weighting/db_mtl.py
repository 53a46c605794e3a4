"""DB-MTL (Dual-Balancing): Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, "Dual-Balancing for Multi-Task
Learning", arXiv 2308.12029, 2023.

1. Loss-scale balancing: every task trains on log(L_t + eps) instead of L_t (task-specific parameters receive
   grad log L_t).
2. Gradient-magnitude balancing: with g_t the gradient of log(L_t + eps) w.r.t. the shared parameters, an EMA
   g^_t <- beta_s g^_t + (1 - beta_s) g_t (beta_s = beta / s^sigma at step s = 1, 2, ...; g^ = 0 before the first
   step, no bias correction) and the shared update

       d = alpha_s sum_t g^_t / (||g^_t|| + eps),        alpha_s = max_t ||g^_t||,

   so every task contributes a vector of the same norm, the largest one's (:func:`db_mtl_direction`).

The reported weights are alpha_s / (||g^_t|| + eps), the weights of d with respect to the EMA gradients g^
(d = weights @ g^), not the current ones. Defaults follow LibMTL: beta = 0.9, sigma = 0 (``beta_sigma``),
eps = 1e-8 (the paper grid-searches beta over {0.1, 0.5, 0.9} and the same divided by sqrt(s)). As in LibMTL,
only ``mode="params"``: the EMA of gradients w.r.t. the shared representation would mix different batches' samples.
The EMA buffer (k, d) is created on the first step (d is not known before); the state dict carries its shape.

A task whose loss is exactly 0 (switched off by the training schedule) is inactive: its EMA row keeps its value
(averaging in its zero gradient would shrink it while the task is off), it gets weight 0, and alpha_s is the largest
norm among the active tasks, so d = alpha_s sum over the active t of g^_t / (||g^_t|| + eps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting


def db_mtl_direction(ema_grads: Tensor, eps: float = 1e-8, active: Tensor | None = None) -> Aggregation:
    """DB-MTL's direction from the ``(k, d)`` EMA gradients: ``max_t ||g^_t|| * sum_t g^_t / (||g^_t|| + eps)``
    over the ``active`` tasks (``(k,)`` bool, default all; the others get weight 0); the weights are w.r.t. the
    rows of ``ema_grads``."""
    if active is None:
        active = torch.ones(ema_grads.shape[0], dtype=torch.bool, device=ema_grads.device)
    norms = torch.where(active, ema_grads.norm(dim=1), 0.0)
    weights = torch.where(active, norms.max() / (norms + eps), 0.0)
    return Aggregation(weights @ ema_grads, weights)


class DBMTL(GradientWeighting):
    """Log losses plus EMA gradients rescaled to the largest norm (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        eps: float = 1e-8,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        if mode != "params":
            raise ConfigError(f"weighting.mode must be 'params' for DB-MTL (an EMA of gradients w.r.t. the shared "
                              f"representation would mix different batches' samples), got {mode!r}")
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not 0 <= beta <= 1:
            raise ConfigError(f"weighting.beta must be in [0, 1], got {beta}")
        if not beta_sigma >= 0:
            raise ConfigError(f"weighting.beta_sigma must be >= 0, got {beta_sigma}")
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0 (it keeps log(L + eps) finite), got {eps}")
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.eps = eps
        self.register_buffer("ema_grads", torch.zeros(0))  # (k, d) once the first step has run
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Give the lazily-shaped EMA buffer the checkpoint's shape before the ordinary load copies into it."""
        saved = state_dict.get(prefix + "ema_grads")
        if saved is not None and saved.shape != self.ema_grads.shape:
            self.ema_grads = torch.zeros(saved.shape, dtype=saved.dtype, device=self.ema_grads.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def keeps_gradients(self, wrt: str) -> bool:
        """No: the method's G is of the log losses, not of the losses."""
        return False

    def task_gradients(self, losses: Tensor, ctx: StepContext, combine: Tensor | None = None) -> Tensor:
        """G of the log losses log(L_t + eps) (see :meth:`GradientWeighting.task_gradients`); :meth:`aggregate`
        still gets the losses themselves, so it can tell the inactive tasks."""
        return super().task_gradients(torch.log(losses + self.eps), ctx, combine)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        if self.ema_grads.numel() == 0:
            self.ema_grads = torch.zeros_like(grads)
        elif self.ema_grads.shape != grads.shape:
            raise RuntimeError(f"DB-MTL's EMA gradients have shape {tuple(self.ema_grads.shape)} but this step's "
                               f"gradients have {tuple(grads.shape)}; the shared parameters changed")
        active = active_tasks(losses)
        self.steps += 1
        beta = self.beta / self.steps.to(grads.dtype) ** self.beta_sigma
        self.ema_grads.copy_(torch.where(active.unsqueeze(1), beta * self.ema_grads + (1.0 - beta) * grads,
                                         self.ema_grads))
        return db_mtl_direction(self.ema_grads, self.eps, active)
