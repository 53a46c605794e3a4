"""STCH (Smooth Tchebycheff scalarisation): Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization
for Multi-Objective Optimization", ICML 2024 (arXiv 2402.19078).

The Tchebycheff scalarisation max_i lambda_i (f_i - z*_i) (preference lambda, ideal point z*) reaches every Pareto
optimum but is not smooth; STCH replaces the max by its smooth upper bound

    g_mu = mu log sum_i exp(lambda_i (f_i - z*_i) / mu),
    grad g_mu = sum_i softmax_i(lambda (f - z*) / mu) lambda_i grad f_i,

which tends to the max as mu -> 0. It is a loss-level method: one backward, no per-task gradients, no solver.

For multi-task learning the authors' code (and LibMTL, which copies it) makes the objectives scale-free:
f_i = log(L_i / z_i) with z_i a nadir point, the mean loss of task i over the batches of one early epoch, z* = 0 and
lambda_i = 1, and multiplies the result by k. Before that epoch has passed they train on sum_i log L_i. With e the
0-based epoch and E = ``nadir_epoch`` (LibMTL's ``STCH_warmup_epoch``):

* e <= E: loss sum_i log L_i, i.e. weights w_i = 1 / L_i; in epoch E every batch's losses are also summed into the
  nadir, z_i = their mean;
* e > E:  loss k mu log sum_i exp(log(L_i / z_i) / mu), i.e. weights w_i = k softmax_i(log(L / z) / mu) / L_i.

This follows the authors' MTL code, as LibMTL does; the defaults mu = 1 and E = 4 are theirs too (the paper
evaluates mu in {0.01, 0.1, 0.5, 1}; its Pareto-set-learning code uses 0.01; torchjd's scalariser works on raw
losses with lambda = 1/k, no nadir and no warm-up, and is not offered here). The loss is scale-invariant in both
phases: L_i -> c L_i gives z_i -> c z_i, and w_i grad L_i does not change. With mu = 1 it is k log sum_i L_i / z_i,
a nadir-normalised sum divided by its current value. The recorded weights are the effective w_i (LibMTL records 1s).
Nothing is random; the nadir sums and counts are buffers, so a checkpoint resumes exactly. Losses must be positive
(their logarithm is taken); a run of at most E + 1 epochs never leaves the warm-up.

A task whose loss is exactly 0 (switched off by the training schedule) has weight 0, adds nothing to its nadir, and
the softmax runs over the active tasks. A task that has no nadir after epoch E (it was off throughout) takes its
loss at its first active step as its nadir.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, share_over_active


def stch_weights(losses: Tensor, nadir: Tensor, mu: float, active: Tensor) -> Tensor:
    """w_i = k' softmax_i(log(L / z) / mu) / L_i over the ``active`` tasks (k' of them), 0 on the others: the
    derivatives of k' mu log sum_i exp(log(L_i / z_i) / mu) with respect to the losses."""
    safe_losses = torch.where(active, losses, 1.0)
    scores = torch.where(active, torch.log(safe_losses / torch.where(active, nadir, 1.0)) / mu, float("-inf"))
    shift = torch.where(active.any(), scores.amax(), 0.0)
    shares = share_over_active(torch.exp(torch.where(active, scores - shift, 0.0)), active)
    return active.sum() * shares / safe_losses


class SmoothTchebycheff(Weighting):
    """Smooth Tchebycheff scalarisation of nadir-normalised log losses (see the module docstring)."""

    def __init__(self, task_names: Sequence[str], mu: float = 1.0, nadir_epoch: int = 4) -> None:
        super().__init__(task_names)
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu > 0:
            raise ConfigError(f"weighting.mu must be a number > 0 (smaller: closer to the max), got {mu!r}")
        if isinstance(nadir_epoch, bool) or not isinstance(nadir_epoch, int) or nadir_epoch < 0:
            raise ConfigError(f"weighting.nadir_epoch must be an integer >= 0 (the 0-based epoch whose mean losses "
                              f"give the nadir), got {nadir_epoch!r}")
        self.mu = float(mu)
        self.nadir_epoch = nadir_epoch
        self.register_buffer("nadir_sums", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("nadir_counts", torch.zeros(self.num_tasks, dtype=torch.long))

    @property
    def nadir(self) -> Tensor:
        """z, the mean collected loss per task (0 where none was collected yet)."""
        return self.nadir_sums / self.nadir_counts.clamp_min(1)

    def weights(self, losses: Tensor, epoch: int) -> Tensor:
        """The ``(k,)`` weights of the step's detached ``losses`` in ``epoch``; collects the nadir losses."""
        active = active_tasks(losses)
        values = losses.detach().to(torch.float64)
        if epoch <= self.nadir_epoch:
            if epoch == self.nadir_epoch:
                self._collect(values, active)
            return torch.where(active, 1.0 / torch.where(active, values, 1.0), 0.0)
        self._collect(values, active & (self.nadir_counts == 0))
        return stch_weights(values, self.nadir, self.mu, active)

    def _collect(self, losses: Tensor, tasks: Tensor) -> None:
        self.nadir_sums += torch.where(tasks, losses, 0.0)
        self.nadir_counts += tasks.long()

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = self.weights(losses, ctx.epoch).to(losses.dtype)
        ctx.scale((weights * losses).sum()).backward()
        return weights
