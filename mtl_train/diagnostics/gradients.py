"""Gradient statistics of a training step: the norms of the per-task gradients, their pairwise cosines and the
fraction of conflicting pairs, from the ``(k, d)`` per-task gradient matrix G (row t = dL_t/dw).

w is the shared representation z (``wrt: rep``: k backwards through the heads) or the shared parameters
(``wrt: params``: one more backward of the k rows through the trunk,
:class:`~mtl_train.weighting.gradients.TrunkJacobian`). Two tasks conflict when cos(g_i, g_j) < 0 (Yu et al.,
"Gradient Surgery for Multi-Task Learning", NeurIPS 2020); the conflict fraction is the share of conflicting pairs
among the pairs of active tasks. A task switched off by the training schedule (loss exactly 0) has no gradient:
its norm and cosines are NaN and its pairs are left out of the fraction.

Sampling is on the device and reads nothing on the host: each sample is one row of :func:`statistics_header`'s
columns, buffered by the trainer and written to ``gradients.csv`` at its flush.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import combinations
from pathlib import Path

import torch
from torch import Tensor

from mtl_train.engine.outputs import read_step_csv
from mtl_train.errors import ConfigError
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.gradients import TrunkJacobian, representation_gradients

WRT = ("rep", "params")
#: Norms below this count as zero when dividing by them (a cosine with a zero gradient is 0).
NORM_EPS = 1e-12


@dataclass(frozen=True)
class DiagnosticsSettings:
    """``cfg.diagnostics``: gradient statistics every ``every`` steps (0 = off) w.r.t. ``wrt``, and the inter-task
    affinity every ``affinity_every`` steps (0 = off). A sample is taken at steps 1, 1 + n, 1 + 2n, ... (rows of
    ``losses.csv``), so even a short run has one."""

    every: int = 0
    wrt: str = "rep"
    affinity_every: int = 0

    def __post_init__(self) -> None:
        for key in ("every", "affinity_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"diagnostics.{key} must be an integer >= 0 (steps between samples; 0 = off), "
                                  f"got {value!r}")
        if self.wrt not in WRT:
            raise ConfigError(f"diagnostics.wrt must be 'rep' (the shared representation z) or 'params' (the shared "
                              f"parameters), got {self.wrt!r}")

    @property
    def enabled(self) -> bool:
        return self.every > 0 or self.affinity_every > 0

    def gradients_due(self, step: int) -> bool:
        """Whether the step about to run (0-based ``step``, row ``step + 1``) samples the gradient statistics."""
        return self.every > 0 and step % self.every == 0

    def affinity_due(self, step: int) -> bool:
        """Whether the step about to run (0-based) samples the affinity."""
        return self.affinity_every > 0 and step % self.affinity_every == 0


def task_pairs(tasks: list[str]) -> list[tuple[str, str]]:
    """The unordered pairs (a, b), a before b in the run's task order."""
    return list(combinations(tasks, 2))


def statistics_header(tasks: list[str]) -> list[str]:
    """``gradients.csv``'s columns: ``step,conflict_fraction,norm:<task>...,cos:<a>:<b>...``."""
    return ["step", "conflict_fraction", *(f"norm:{t}" for t in tasks), *(f"cos:{a}:{b}" for a, b in task_pairs(tasks))]


def gradient_statistics(grads: Tensor, active: Tensor) -> Tensor:
    """One row of ``gradients.csv`` (without the step), float64: the conflict fraction, the k norms ||g_i|| and
    the k(k-1)/2 cosines g_i.g_j / (||g_i|| ||g_j||) (pairs i < j), from G ``(k, d)`` in true units and the
    ``(k,)`` bool ``active``. Inactive tasks' entries are NaN; the fraction is NaN with fewer than two active tasks."""
    grads = grads.detach().double()
    k = grads.shape[0]
    norms = grads.norm(dim=1)
    unit = grads / norms.clamp_min(NORM_EPS).unsqueeze(1)
    cosines = unit @ unit.T
    first, second = torch.triu_indices(k, k, offset=1, device=grads.device)
    pair_active = active[first] & active[second]
    pair_cosines = torch.where(pair_active, cosines[first, second], math.nan)
    conflicts = ((pair_cosines < 0) & pair_active).sum().double()
    fraction = torch.where(pair_active.any(), conflicts / pair_active.sum().clamp_min(1), math.nan)
    return torch.cat([fraction.reshape(1), torch.where(active, norms, math.nan), pair_cosines])


def representation_check(model: MultiTaskModel) -> None:
    """``wrt: rep`` needs one z that every task reads."""
    if not model.backbone.shares_representation:
        raise ConfigError(f"diagnostics.wrt=rep needs a representation every task reads, and backbone "
                          f"{type(model.backbone).__name__} keeps one per task; set diagnostics.wrt=params")


def gradient_matrix(scaled_losses: Tensor, z: Tensor, model: MultiTaskModel, wrt: str,
                    trunk_jacobian: TrunkJacobian) -> Tensor:
    """G ``(k, d)`` of the (loss-scaled) task losses w.r.t. z (``rep``) or the shared parameters (``params``), with
    the gradient engine (:mod:`mtl_train.weighting.gradients`) and ``torch.autograd.grad``: no ``.grad`` is
    touched and the graph is kept for the step's own backward. In the units of ``scaled_losses``."""
    rows, _ = representation_gradients(scaled_losses, z, [[] for _ in range(scaled_losses.shape[0])])
    if wrt == "rep":
        return rows.flatten(1)
    return trunk_jacobian(z, model.shared_parameters(), rows)


@dataclass
class GradientSamples:
    """``gradients.csv`` read back: ``steps`` (n,), ``conflict`` (n,), ``norms`` (n, k) and ``cosines``
    (n, k, k, symmetric, diagonal 1, NaN where a task was inactive)."""

    tasks: list[str]
    steps: Tensor
    conflict: Tensor
    norms: Tensor
    cosines: Tensor

    def mean_cosines(self) -> Tensor:
        """(k, k): the mean over samples of each pair's cosine (NaN samples left out), diagonal 1."""
        return torch.nanmean(self.cosines, dim=0)

    def norm_ratio(self) -> Tensor:
        """(n,): max_i ||g_i|| / min_i ||g_i|| over the active tasks of each sample."""
        finite = torch.isfinite(self.norms)
        largest = torch.where(finite, self.norms, -math.inf).amax(dim=1)
        smallest = torch.where(finite, self.norms, math.inf).amin(dim=1)
        return largest / smallest


def read_gradients_csv(path: Path) -> GradientSamples:
    """Read a run's ``gradients.csv`` (:func:`statistics_header`)."""
    columns, steps, values = read_step_csv(path)
    tasks = [name.split(":", 1)[1] for name in columns if name.startswith("norm:")]
    k, n = len(tasks), len(steps)
    cosines = torch.full((n, k, k), math.nan, dtype=torch.float64)
    for column, name in enumerate(columns):
        if name.startswith("cos:"):
            _, a, b = name.split(":")
            cosines[:, tasks.index(a), tasks.index(b)] = cosines[:, tasks.index(b), tasks.index(a)] = values[:, column]
    cosines[:, range(k), range(k)] = 1.0
    return GradientSamples(tasks, steps, values[:, 0], values[:, 1:1 + k], cosines)


def nan_to_none(values: list) -> list:
    """JSON-safe nested lists: NaN -> None."""
    return [nan_to_none(v) if isinstance(v, list) else (None if math.isnan(v) else v) for v in values]


def gradients_summary(path: Path, settings: DiagnosticsSettings) -> dict:
    """``summary.json``'s ``diagnostics.gradients``: means over the samples of ``gradients.csv``."""
    samples = read_gradients_csv(path)
    return {"wrt": settings.wrt, "every": settings.every, "samples": len(samples.steps),
            "mean_cosine": nan_to_none(samples.mean_cosines().tolist()),
            "mean_norm": nan_to_none(torch.nanmean(samples.norms, dim=0).tolist()),
            "conflict_fraction": nan_to_none([torch.nanmean(samples.conflict).item()])[0]}


def diagnostics_settings(node: Mapping | None) -> DiagnosticsSettings:
    """The :class:`DiagnosticsSettings` of ``cfg.diagnostics`` (off when absent); an unknown key is a ConfigError."""
    values = dict(node or {})
    known = [field.name for field in fields(DiagnosticsSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"diagnostics: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(known)} "
                          "(see configs/diagnostics/gradients.yaml)")
    return DiagnosticsSettings(**values)
