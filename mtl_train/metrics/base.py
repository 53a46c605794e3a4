"""The per-task metric contract, :class:`TaskMetric`, and the shared confusion-matrix machinery.

A metric accumulates statistics over any number of batches and reduces them to named floats:

* ``reset()`` forgets everything accumulated (a fresh metric is already reset).
* ``update(prediction, target)`` adds one batch. ``prediction`` is the head's raw output (logits for
  classification and segmentation), ``target`` the matching target tensor on the same device.
  State lives on the prediction's device and ``update`` never copies to the host (no ``.item()``,
  no data-dependent shapes), so it can run every step without stalling an accelerator. Shape and
  dtype problems raise :class:`ValueError` here; problems that need the values themselves (a
  label outside ``[0, num_classes)``) are detected on the device and raised by ``compute()``.
* ``compute()`` returns ``{name: float}`` with exactly the keys of ``higher_is_better``; it is the
  only method that synchronises with the host. It raises :class:`ValueError` when nothing has been
  accumulated since the last reset.
* ``higher_is_better`` (class attribute) maps each metric name to whether larger is better.
* ``primary`` (class attribute) names the metric used for model selection ("best" checkpoint).
* ``class_logits`` (class attribute) is True when predictions are class logits along dim 1 (classification,
  segmentation), so methods that need predicted distributions (e.g. ``weighting=max_entropy``) can tell.

Sums are accumulated in float64 and counts in int64, so results do not drift over many batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from mtl_train.errors import ConfigError


class TaskMetric(ABC):
    """Accumulates one task's predictions and targets and reduces them to named scores."""

    higher_is_better: ClassVar[dict[str, bool]]
    primary: ClassVar[str]
    class_logits: ClassVar[bool] = False

    @abstractmethod
    def reset(self) -> None:
        """Forget everything accumulated so far."""

    @abstractmethod
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add one batch; state stays on ``prediction.device`` and nothing is copied to the host."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Scores over everything accumulated since the last reset, keyed like ``higher_is_better``."""

    def update_labelled(self, prediction: Tensor, target: Tensor, labelled: Tensor) -> None:
        """Add the labelled part of one batch (``labelled``: bool, ``target``'s shape; :mod:`mtl_train.labels`).

        This default adds the samples whose every target element is labelled; it selects them by boolean indexing,
        which reads the mask on the host. Metrics that can mask element by element on the device override it."""
        rows = labelled.reshape(labelled.shape[0], -1).all(dim=1)
        if bool(rows.any()):
            self.update(prediction[rows], target[rows])


class ConfusionMatrixMetric(TaskMetric):
    """Base for metrics derived from the confusion matrix of argmax predictions.

    ``prediction`` is logits of shape ``(B, C, *spatial)`` and ``target`` integer class indices of
    shape ``(B, *spatial)``. Entry ``[t, p]`` of the matrix counts elements whose true class is
    ``t`` and whose argmax prediction is ``p``. Elements whose target lies outside ``[0, C)`` are
    left out of the matrix and counted; :meth:`confusion_matrix` (hence ``compute()``) raises
    :class:`ValueError` if there were any.
    """

    class_logits: ClassVar[bool] = True

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError(f"metric.num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._counts: Tensor | None = None  # flat (C*C,) int64, index = target * C + prediction
        self._invalid: Tensor | None = None  # scalar int64: targets outside [0, C)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        self._add(prediction, target, None)

    def update_labelled(self, prediction: Tensor, target: Tensor, labelled: Tensor) -> None:
        """Add the labelled elements of one batch, element by element and without host reads: an unlabelled element
        is neither counted nor an invalid class index."""
        self._add(prediction, target, labelled)

    def _add(self, prediction: Tensor, target: Tensor, labelled: Tensor | None) -> None:
        c = self.num_classes
        if prediction.ndim < 2 or prediction.shape[1] != c:
            raise ValueError(f"prediction must be logits of shape (B, {c}, ...), got {tuple(prediction.shape)}")
        expected = prediction.shape[:1] + prediction.shape[2:]
        if target.shape != expected:
            raise ValueError(f"target must have shape {tuple(expected)}, got {tuple(target.shape)}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        if self._counts is None or self._invalid is None:
            self._counts = torch.zeros(c * c, dtype=torch.int64, device=prediction.device)
            self._invalid = torch.zeros((), dtype=torch.int64, device=prediction.device)
        target = target.to(torch.int64)
        if labelled is not None:
            target = torch.where(labelled, target, 0)
        valid = (target >= 0) & (target < c)
        # Same encoding as torch.bincount(target * C + pred, minlength=C*C), but bincount sizes its
        # output from the data's max, which forces a host sync on CUDA; index_add_ into a
        # fixed-size buffer does not.
        index = torch.where(valid, target * c + prediction.argmax(dim=1), 0)
        counted = valid if labelled is None else valid & labelled
        self._counts.index_add_(0, index.flatten(), counted.flatten().to(torch.int64))
        self._invalid += (~valid).sum()

    def confusion_matrix(self) -> Tensor:
        """The ``(C, C)`` int64 matrix (rows: true class, columns: predicted class), on the CPU."""
        if self._counts is None or self._invalid is None:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        counts, invalid = torch.cat([self._counts, self._invalid.reshape(1)]).cpu().split([self.num_classes**2, 1])
        if invalid.item() > 0:
            raise ValueError(
                f"{invalid.item()} target values were outside [0, {self.num_classes}); "
                f"check the task's num_classes against the dataset's labels"
            )
        if counts.sum().item() == 0:
            raise ValueError(f"{type(self).__name__}.compute() called with no accumulated elements")
        return counts.reshape(self.num_classes, self.num_classes)
