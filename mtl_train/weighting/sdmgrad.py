"""SDMGrad (Stochastic Direction-oriented Multi-objective Gradient descent): Xiao, Ban & Ji, "Direction-oriented
Multi-objective Learning: Simple and Provable Stochastic Algorithms", NeurIPS 2023 (arXiv 2305.18409).

The update is the min-norm direction regularised towards the mean gradient g_0 = G^T w~ (w~ = 1/k):

    w* = argmin_{w in simplex} 1/2 ||G^T (w + lamda w~)||^2,        d = G^T (w* + lamda w~) / (1 + lamda),

so every weight is at least lamda w~_i / (1 + lamda) (lamda = 0: MGDA; large lamda: the mean gradient). The
sub-problem is solved stochastically as in the paper: with A = G_1 G_2^T from two independent samples (double
sampling), ``iterations`` steps of projected gradient descent (step size ``inner_lr``) with heavy-ball momentum,
warm-started from the previous step's w (initially 1/k, checkpointed; the momentum restarts every step):

    A~ = A / (s^2 + 1e-8),  s = the mean over the active tasks of sqrt(max(A_ii, 0))   (a scale-free step size)
    q = A~ (w + lamda w~);   v = q (first iteration) or momentum v + q;   w <- Proj_simplex(w - inner_lr v),

then d = omega @ G_3 with omega = (w + lamda w~) / (1 + lamda) and G_3 a third sample (the reported weights are
omega). On the device, a fixed number of iterations, no host synchronisation. A~ has a mean diagonal near 1, so the
default step of 10 is past the stable step of plain gradient descent on it: the iterates need not converge and often
end at a vertex of the simplex (as with the reference implementations); a smaller ``inner_lr`` with more
``iterations`` solves the sub-problem itself.

Samples (``sampling``, :class:`~mtl_train.weighting.gradient_based.SubBatchGradientWeighting`): independent samples
are disjoint parts of the step's batch. ``three`` (default) is the paper's algorithm and LibMTL's (three batches per
step: LibMTL's batch size B corresponds to ``trainer.batch_size`` = 3B here); ``two`` takes A from two halves and
updates with the whole batch; ``one`` uses A = G G^T of the whole batch, which is what the authors' code computes as
written (its three gradient buffers are one tensor, so all three "samples" are the last batch).

Defaults and sources: lamda = 0.3 (the authors' run scripts, LibMTL, torchjd; the authors' class default is 0.6),
``inner_lr`` = 10 (the authors' code and torchjd; LibMTL: 5), momentum = 0.5, iterations = 20 (all agree). The
scale s as LibMTL and torchjd (the authors add 1e-4 inside the square root). The authors' code also multiplies the
shared gradient by k and clips it to norm 1; that is left to ``trainer.grad_clip`` here. The heads get the gradient
of their own loss over the whole batch (LibMTL sums the three batches').

``mode=rep``: A pairs sample i of one part with sample i of the other (see :mod:`mtl_train.weighting.modo`); not in
the paper or LibMTL.

A task whose loss is exactly 0 (switched off by the training schedule) is inactive: w~ is uniform over the active
tasks, the sub-problem runs on their simplex, the inactive task's stored w keeps its value and its weight is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.gradient_based import SubBatchGradientWeighting
from mtl_train.weighting.solvers import project_onto_simplex


def sdmgrad_weights(cross: Tensor, start: Tensor, lamda: float = 0.3, lr: float = 10.0, momentum: float = 0.5,
                    iterations: int = 20, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(w, omega)``: the sub-problem's solution w from A = G_1 G_2^T (``cross``, (k, k)) warm-started at
    ``start``, and the update weights omega = (w + lamda w~) / (1 + lamda), over the ``active`` tasks (default all;
    the others get 0 in both)."""
    if active is None:
        active = torch.ones(cross.shape[0], dtype=torch.bool, device=cross.device)
    preference = torch.where(active, 1.0 / active.sum().clamp_min(1), 0.0).to(cross.dtype)
    roots = torch.where(active, cross.diagonal().clamp_min(0.0).sqrt(), 0.0)
    scale = roots.sum() / active.sum().clamp_min(1)
    scaled = cross / (scale**2 + 1e-8)
    w = torch.where(active, start, 0.0)
    velocity = torch.zeros_like(w)
    for iteration in range(iterations):
        gradient = scaled @ (w + lamda * preference)
        velocity = gradient if iteration == 0 else momentum * velocity + gradient
        w = project_onto_simplex(w - lr * velocity, active)
    return w, torch.where(active, (w + lamda * preference) / (1.0 + lamda), 0.0)


class SDMGrad(SubBatchGradientWeighting):
    """Direction-oriented stochastic MGDA with a warm-started inner solver (see the module docstring)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        lamda: float = 0.3,
        inner_lr: float = 10.0,
        momentum: float = 0.5,
        iterations: int = 20,
        sampling: str = "three",
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, sampling=sampling, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk,
                         weight_ema=weight_ema)
        if not lamda >= 0:
            raise ConfigError(f"weighting.lamda must be >= 0 (the pull towards the mean gradient, e.g. 0.3), "
                              f"got {lamda}")
        if not inner_lr > 0:
            raise ConfigError(f"weighting.inner_lr must be > 0 (the inner solver's step size, e.g. 10), got {inner_lr}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"weighting.momentum must be in [0, 1) (e.g. 0.5), got {momentum}")
        if not (isinstance(iterations, int) and iterations >= 1):
            raise ConfigError(f"weighting.iterations must be an integer >= 1 (e.g. 20), got {iterations!r}")
        self.lamda = lamda
        self.inner_lr = inner_lr
        self.momentum = momentum
        self.iterations = iterations
        self.register_buffer("inner_weights", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def cross_weights(self, cross: Tensor, active: Tensor) -> Tensor:
        w, omega = sdmgrad_weights(cross.detach().to(torch.float64), self.inner_weights, self.lamda, self.inner_lr,
                                   self.momentum, self.iterations, active)
        self.inner_weights.copy_(torch.where(active, w, self.inner_weights))
        return omega
