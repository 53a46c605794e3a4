"""Aligned-MTL: Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023.

G is replaced by the closest matrix (a Procrustes problem) whose singular values all equal a common scale s:
with M = G G^T = V diag(lambda) V^T (k x k) and the R eigenvalues above the tolerance kept,

    B = sqrt(s) * V diag(1 / sqrt(lambda)) V^T,        aligned gradients  B G,        d = (B w)^T G,

so the rows of B G are orthogonal with norm sqrt(s) (B M B^T = s I on the kept subspace) and the weights are
alpha = B w, w the task importances. The scale follows the official repository's ``scale_mode``: ``min``
(s = the smallest kept eigenvalue, the default in the repository and LibMTL), ``median`` (torch.median, the lower
median for an even count) or ``rmse`` (s = the mean of the kept eigenvalues). The tolerance is the repository's,
lambda_max * k * eps of the gradients' dtype. w defaults to ones (LibMTL: alpha = B.sum(0)).

The repository and LibMTL call ``torch.symeig``, removed from PyTorch; this uses ``torch.linalg.eigh`` (in float64
on the gradients' device; ``eigh`` checks its convergence flag, one host synchronisation per call). Rank
truncation is done with masks, not by slicing, so no other synchronisation occurs. ``mode="rep"`` gives
Aligned-MTL-UB (gradients w.r.t. the shared representation z).

A task whose loss is exactly 0 (switched off by the training schedule) has a zero gradient, whose eigen-direction
(eigenvalue 0) is dropped, so the scale and B are those of the active tasks; its importance and its weight are set
to 0. With one active task, d is its gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import active_tasks
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting

SCALE_MODES = ("min", "median", "rmse")


def aligned_basis(gram: Tensor, scale_mode: str = "min", data_dtype: torch.dtype | None = None) -> Tensor:
    """B = sqrt(s) V diag(1/sqrt(lambda)) V^T (k, k, symmetric) for the Gramian ``gram = G G^T``; eigen-directions
    with lambda <= lambda_max * k * eps(``data_dtype``, default ``gram.dtype``) are dropped. Float64 on ``gram``'s
    device. An all-zero ``gram`` gives B = 0."""
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    k = gram.shape[0]
    matrix = gram.detach().to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    tol = eigenvalues.max() * k * torch.finfo(data_dtype or gram.dtype).eps
    kept = eigenvalues > tol
    inverse_sqrt = torch.where(kept, eigenvalues.clamp_min(1e-300).rsqrt(), torch.zeros_like(eigenvalues))
    if scale_mode == "min":
        scale = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("inf"))).min()
    elif scale_mode == "median":
        scale = torch.nanmedian(torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("nan"))))
    else:
        scale = (eigenvalues * kept).sum() / kept.sum().clamp_min(1)
    scale = torch.where(kept.any(), scale, torch.zeros_like(scale))
    return torch.sqrt(scale) * (eigenvectors * inverse_sqrt) @ eigenvectors.T


def aligned_mtl_weights(gram: Tensor, task_weights: Tensor | None = None, scale_mode: str = "min",
                        data_dtype: torch.dtype | None = None) -> Tensor:
    """alpha = B w for the Gramian ``gram = G G^T`` (k, k), so that the Aligned-MTL direction is ``alpha @ G``;
    ``task_weights`` is w (default ones). Returns ``gram``'s dtype."""
    basis = aligned_basis(gram, scale_mode, data_dtype)
    if task_weights is None:
        task_weights = torch.ones(gram.shape[0], dtype=basis.dtype, device=basis.device)
    w = task_weights.to(basis)
    return (basis @ w).to(gram.dtype)


def aligned_gradients(grads: Tensor, scale_mode: str = "min") -> Tensor:
    """The aligned matrix B G of the ``(k, d)`` gradients (rows orthogonal with equal norms); for inspection."""
    return aligned_basis(grads @ grads.T, scale_mode).to(grads.dtype) @ grads


class AlignedMTL(GradientWeighting):
    """Gradients aligned to equal, orthogonal components; weights alpha = B w (see the module docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        scale_mode: str = "min",
        task_weights: Mapping[str, float] | Sequence[float] | None = None,
        mode: str = "params",
        jacobian: str = "auto",
        jacobian_chunk: int | None = None,
        weight_ema: float = 0.0,
    ) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if scale_mode not in SCALE_MODES:
            raise ConfigError(f"weighting.scale_mode must be one of {list(SCALE_MODES)}, got {scale_mode!r}")
        self.scale_mode = scale_mode
        self.register_buffer("task_weights", torch.tensor(self._in_task_order(task_weights)), persistent=False)

    def _in_task_order(self, weights: Mapping[str, float] | Sequence[float] | None) -> list[float]:
        if weights is None:
            return [1.0] * self.num_tasks
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.task_names))
            if unknown:
                raise ConfigError(f"weighting.task_weights names unknown tasks {unknown}; "
                                  f"the tasks are {self.task_names}")
            return [float(weights.get(t, 1.0)) for t in self.task_names]
        if len(weights) != self.num_tasks:
            raise ConfigError(f"weighting.task_weights has {len(weights)} values but there are {self.num_tasks} tasks "
                              f"{self.task_names}; give one per task, in task order, or a mapping task -> weight")
        return [float(w) for w in weights]

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        active = active_tasks(losses)
        task_weights = torch.where(active, self.task_weights.to(grads), 0.0)
        alpha = aligned_mtl_weights(grads @ grads.T, task_weights, self.scale_mode, data_dtype=grads.dtype)
        alpha = torch.where(active, alpha, 0.0)
        return Aggregation(alpha @ grads, alpha)
