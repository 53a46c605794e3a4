"""The trainer's side of the per-run diagnostics: on the steps they are due, the gradient statistics
(:mod:`.gradients`) and the affinity (:mod:`.affinity`) of the step, as device tensors buffered until the trainer's
next flush (no host sync in the step).

Where G comes from, per step:

* a method that builds G in the space asked for (:meth:`~mtl_train.weighting.base.Weighting.keeps_gradients`, e.g.
  PCGrad with ``mode`` equal to ``diagnostics.wrt``) is asked to keep it (:attr:`Weighting.keep_gradients`): no
  extra backward;
* otherwise (loss-based methods, a different mode, sub-batch sampling) G is computed before the method's backward
  with ``torch.autograd.grad`` on the retained graph: k backwards to z, and for ``wrt: params`` (or the affinity)
  one more through the trunk (:class:`~mtl_train.weighting.gradients.TrunkJacobian`). No ``.grad`` is touched and
  the RNGs are not drawn from, so the run's losses and weights are those of a run without diagnostics.

Under torchrun each rank samples the G of its own share of the batch; rank 0's are written.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mtl_train.diagnostics.affinity import affinity_header, lookahead_affinity, off_diagonal
from mtl_train.diagnostics.gradients import (DiagnosticsSettings, gradient_matrix, gradient_statistics,
                                             representation_check, statistics_header)
from mtl_train.engine.outputs import RunWriter
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import Weighting, active_tasks
from mtl_train.weighting.gradient_based import unscale
from mtl_train.weighting.gradients import TrunkJacobian

#: The files the diagnostics write, by name (without ``.csv``).
GRADIENTS, AFFINITY = "gradients", "affinity"


def diagnostics_headers(settings: DiagnosticsSettings, tasks: list[str]) -> dict[str, list[str]]:
    """The CSV files a run with ``settings`` writes and their headers."""
    return {**({GRADIENTS: statistics_header(tasks)} if settings.every > 0 else {}),
            **({AFFINITY: affinity_header(tasks)} if settings.affinity_every > 0 else {})}


class DiagnosticsSampler:
    """Samples the diagnostics of the steps they are due on (module docstring)."""

    def __init__(self, settings: DiagnosticsSettings, model: MultiTaskModel) -> None:
        if settings.every > 0 and settings.wrt == "rep":
            representation_check(model)
        self.settings = settings
        self.model = model
        self.trunk_jacobian = TrunkJacobian("auto")
        names = {id(p): name for name, p in model.named_parameters()}
        self.shared = [(names[id(p)], p) for p in model.shared_parameters()]  # in G's column order
        self.rows: dict[str, list[tuple[int, Tensor]]] = {GRADIENTS: [], AFFINITY: []}
        self._step_gradients: Tensor | None = None  # G w.r.t. diagnostics.wrt, this step
        self._affinity_gradients: Tensor | None = None  # G w.r.t. the shared parameters, when G above is not
        self._reused_from: Weighting | None = None

    def before_backward(self, step: int, losses: Tensor, z: Tensor, weighting: Weighting,
                        scale: Callable[[Tensor], Tensor], loss_scale: float) -> None:
        """Before the method's backward on the (scheduled) ``losses`` of 0-based ``step``: ask the method to keep G,
        or compute what it will not build."""
        settings = self.settings
        self._step_gradients = self._affinity_gradients = self._reused_from = None
        if settings.gradients_due(step):
            if weighting.keeps_gradients(settings.wrt):
                weighting.keep_gradients = True
                self._reused_from = weighting
            else:
                self._step_gradients = unscale(gradient_matrix(scale(losses), z, self.model, settings.wrt,
                                                               self.trunk_jacobian), loss_scale)
        if settings.affinity_due(step) and not (settings.gradients_due(step) and settings.wrt == "params"):
            self._affinity_gradients = unscale(gradient_matrix(scale(losses), z, self.model, "params",
                                                               self.trunk_jacobian), loss_scale)

    def after_backward(self, step: int, losses: Tensor, lr: float,
                       losses_with: Callable[[dict[str, Tensor] | None], Tensor]) -> None:
        """After the method's backward, before the optimizer step: buffer the step's rows (row ``step + 1``).
        ``losses_with`` recomputes the step's losses with given shared parameters (the affinity's lookahead)."""
        if self._reused_from is not None:
            weighting, self._reused_from = self._reused_from, None
            weighting.keep_gradients = False
            self._step_gradients, weighting.kept_gradients = weighting.kept_gradients, None
            if self._step_gradients is None:
                raise RuntimeError(f"{type(weighting).__name__}.keeps_gradients({self.settings.wrt!r}) is True, but "
                                   "its backward kept no gradient matrix")
        active = active_tasks(losses)
        if self.settings.gradients_due(step):
            self.rows[GRADIENTS].append((step + 1, gradient_statistics(self._step_gradients, active)))
        if self.settings.affinity_due(step):
            grads = self._step_gradients if self._affinity_gradients is None else self._affinity_gradients
            affinity = lookahead_affinity(grads, lr, self.shared, losses_with, active)
            self.rows[AFFINITY].append((step + 1, off_diagonal(affinity)))
        self._step_gradients = self._affinity_gradients = None

    def flush(self, writer: RunWriter) -> None:
        """Write the buffered rows (one device sync per file with rows)."""
        for name, rows in self.rows.items():
            if rows:
                writer.log_rows(name, [step for step, _ in rows], torch.stack([row for _, row in rows]).cpu())
                rows.clear()
