"""MoCo: Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in Multi-objective Learning:
A Provably Convergent Approach", ICLR 2023 (arXiv 2210.12624).

MoCo corrects the bias of stochastic MGDA by tracking every task's gradient across steps and moving the task weights
by one projected-gradient step per training step instead of solving the min-norm problem. With h_i the step's
gradient of task i, the tracked gradients y_i (Y, k x d, zero at first) and the weights lambda (uniform at first),
at step t = 1, 2, ...:

    y_i    <- y_i - beta_t (y_i - h_i)                                      (tracking)
    lambda <- Proj_simplex(lambda - gamma_t (Y Y^T + rho I) lambda)   (a step on 1/2 lambda^T (Y Y^T + rho I) lambda)
    d       = sum_i lambda_i y_i

with beta_t = beta / t^beta_sigma and gamma_t = gamma / t^gamma_sigma. The paper's algorithm also projects every
y_i onto a ball of radius C_i; like the authors' code and LibMTL we leave that out. The recorded weights are lambda,
the weights of d with respect to the tracked gradients y_i (not the step's own gradients, which d mixes with earlier
ones).

Where the sources disagree. The paper (and the authors' ``Tracking.py``) project lambda onto the simplex and track the
raw gradients: the defaults here. LibMTL's ``MoCo`` (and the authors' CAGrad-framework code) instead track
loss-scaled unit gradients h_i = L_i g_i / (||g_i|| + 1e-8) (``normalization: loss``) and replace the projection by a
softmax, lambda <- softmax(lambda - gamma_t (Y Y^T + rho I) lambda) with the previous lambda used as logits
(``lambda_update: softmax``); both options together give LibMTL's rule. The step sizes are the authors' NYUv2
script's: beta = 0.99 and gamma = 0.1, constant, rho = 0. LibMTL decays beta = 0.5 and gamma = 0.1 by t^-0.5
(``beta: 0.5 beta_sigma: 0.5 gamma_sigma: 0.5``); the tracked gradient is then a running mean over the last ~sqrt(t)
steps' gradients, each taken at older parameters, and on MultiFashion (Kurin protocol, 4 epochs) the paper form with
those rates stayed near chance (mean accuracy 0.50 over 3 seeds) where the constant rates reach 0.75. The authors'
Trade-Off-MOL code uses beta = 0.1 and rho = 0.1. Their CAGrad code also multiplies d by k, a learning-rate factor
with SGD.

Only ``mode: params`` (LibMTL likewise refuses rep gradients): Y accumulates across steps, and gradients with
respect to the shared representation are per sample, a different batch's samples each step. Y (k copies of the
shared parameters) is created on the first step; the state dict carries its shape. No solver, no randomness: O(k d)
for the tracking and O(k^2 d) for Y Y^T per step, no host synchronisation.

A task whose loss is exactly 0 (switched off by the training schedule) is inactive: its y_i and stored lambda_i keep
their values, its weight is 0, and the lambda step and the simplex (or softmax) run over the active tasks, starting
from their stored weights rescaled to sum 1 (uniform if those are all 0). The step counter t counts the steps with
at least one active task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks, share_over_active
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting
from mtl_train.weighting.solvers import gramian, project_onto_simplex, softmax_over

LAMBDA_UPDATES = ("projection", "softmax")
NORMALIZATIONS = ("none", "loss")


def weights_over(stored: Tensor, active: Tensor) -> Tensor:
    """The stored weights of the ``active`` tasks rescaled to sum 1 (uniform over them where they sum to 0)."""
    shared = share_over_active(stored, active)
    uniform = share_over_active(torch.ones_like(stored), active)
    return torch.where(shared.sum() > 0, shared, uniform)


def moco_lambda_step(tracked_gram: Tensor, weights: Tensor, gamma: Tensor, rho: float, active: Tensor,
                     lambda_update: str = "projection") -> Tensor:
    """One step of lambda on 1/2 lambda^T (Y Y^T + rho I) lambda over the ``active`` tasks, from the Gramian
    ``tracked_gram`` = Y Y^T (k, k) and ``weights`` (on the simplex over the active tasks): projected onto that
    simplex, or its softmax (``lambda_update``). 0 on the inactive tasks."""
    mask = (active.unsqueeze(0) & active.unsqueeze(1)).to(tracked_gram.dtype)
    gradient = (tracked_gram * mask) @ weights + rho * weights
    stepped = weights - gamma * gradient
    if lambda_update == "projection":
        return project_onto_simplex(stepped, active)
    return softmax_over(stepped, active)


class MoCo(GradientWeighting):
    """Tracked gradients and one simplex step of the weights per training step (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.99,
        beta_sigma: float = 0.0,
        gamma: float = 0.1,
        gamma_sigma: float = 0.0,
        rho: float = 0.0,
        lambda_update: str = "projection",
        normalization: str = "none",
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        if mode != "params":
            raise ConfigError(f"weighting.mode must be 'params' for MoCo (its tracked gradients accumulate across "
                              f"steps; gradients w.r.t. the shared representation are per sample), got {mode!r}")
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not 0 < beta <= 1:
            raise ConfigError(f"weighting.beta must be in (0, 1], got {beta}")
        if not gamma > 0:
            raise ConfigError(f"weighting.gamma must be > 0, got {gamma}")
        for key, value in (("beta_sigma", beta_sigma), ("gamma_sigma", gamma_sigma), ("rho", rho)):
            if not value >= 0:
                raise ConfigError(f"weighting.{key} must be >= 0, got {value}")
        if lambda_update not in LAMBDA_UPDATES:
            raise ConfigError(f"weighting.lambda_update must be 'projection' (paper) or 'softmax' (LibMTL), "
                              f"got {lambda_update!r}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"weighting.normalization must be 'none' (paper) or 'loss' (LibMTL: L_i g_i / "
                              f"||g_i||), got {normalization!r}")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.lambda_update = lambda_update
        self.normalization = normalization
        self.register_buffer("tracked", torch.zeros(0))  # Y (k, d) once the first step has run
        self.register_buffer("lambdas", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Give the lazily-shaped Y the checkpoint's shape before the ordinary load copies into it."""
        saved = state_dict.get(prefix + "tracked")
        if saved is not None and saved.shape != self.tracked.shape:
            self.tracked = torch.zeros(saved.shape, dtype=saved.dtype, device=self.tracked.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def targets(self, grads: Tensor, losses: Tensor) -> Tensor:
        """What Y tracks: the gradients (``none``) or L_i g_i / (||g_i|| + 1e-8) (``loss``)."""
        if self.normalization == "none":
            return grads
        scale = losses.to(grads.dtype) / (grads.norm(dim=1) + 1e-8)
        return grads * scale.unsqueeze(1)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        if self.tracked.numel() == 0:
            self.tracked = torch.zeros_like(grads)
        elif self.tracked.shape != grads.shape:
            raise RuntimeError(f"MoCo's tracked gradients have shape {tuple(self.tracked.shape)} but this step's "
                               f"gradients have {tuple(grads.shape)}; the shared parameters changed")
        active = active_tasks(losses)
        self.steps += active.any().long()
        t = self.steps.clamp_min(1).to(torch.float64)
        beta = self.beta / t**self.beta_sigma
        gamma = self.gamma / t**self.gamma_sigma
        tracked = self.tracked - beta.to(grads.dtype) * (self.tracked - self.targets(grads, losses))
        self.tracked.copy_(torch.where(active.unsqueeze(1), tracked, self.tracked))
        weights = weights_over(self.lambdas.to(torch.float64), active)
        weights = moco_lambda_step(gramian(self.tracked), weights, gamma, self.rho, active, self.lambda_update)
        self.lambdas.copy_(torch.where(active, weights.to(self.lambdas.dtype), self.lambdas))
        weights = weights.to(grads.dtype)
        return Aggregation(weights @ self.tracked, weights)
