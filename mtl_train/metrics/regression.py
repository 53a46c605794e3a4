"""Regression metrics: MAE and RMSE over every predicted value (one per sample, a vector per sample, or a map)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mtl_train.metrics.base import TaskMetric


def _matched(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``prediction`` and ``target`` of one shape ``(B, ...)``; ``(B, 1)`` against ``(B,)`` is read as ``(B,)``. Any
    other difference is a ValueError (it would broadcast silently)."""
    if prediction.ndim == 2 and prediction.shape[1] == 1 and target.ndim == 1:
        prediction = prediction[:, 0]
    if target.ndim == 2 and target.shape[1] == 1 and prediction.ndim == 1:
        target = target[:, 0]
    if prediction.shape != target.shape or prediction.ndim == 0:
        raise ValueError(f"prediction and target must have the same shape (B, ...), got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    return prediction, target


class RegressionMetrics(TaskMetric):
    """Mean absolute error and root mean squared error over every predicted value.

    ``prediction`` and ``target``: the same shape, ``(B,)`` (one value per sample; ``(B, 1)`` is accepted for
    either), ``(B, D)`` (a vector) or ``(B, C, *spatial)`` (a dense map).

    * ``mae``: mean of ``|prediction - target|`` over all elements.
    * ``rmse``: square root of the mean of ``(prediction - target)**2`` over all elements.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"mae": False, "rmse": False}
    primary: ClassVar[str] = "mae"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: Tensor | None = None  # float64 (3,): [sum of |error|, sum of error**2, elements counted]

    def update(self, prediction: Tensor, target: Tensor) -> None:
        prediction, target = _matched(prediction, target)
        self._add(prediction.detach().double() - target.double(), None)

    def update_labelled(self, prediction: Tensor, target: Tensor, labelled: Tensor) -> None:
        """Add the labelled elements only, element by element and without host reads."""
        prediction, target = _matched(prediction, target)
        labelled = labelled.reshape(target.shape)
        error = prediction.detach().double() - torch.where(labelled, target, prediction.detach()).double()
        self._add(error, labelled)

    def _add(self, error: Tensor, labelled: Tensor | None) -> None:
        count = torch.tensor(float(error.numel()), dtype=torch.float64, device=error.device) if labelled is None \
            else labelled.sum(dtype=torch.float64)
        batch = torch.stack([error.abs().sum(), error.square().sum(), count])
        self._sums = batch if self._sums is None else self._sums + batch

    def compute(self) -> dict[str, float]:
        if self._sums is None or self._sums[2].item() == 0:
            raise ValueError("RegressionMetrics.compute() called before any update()")
        absolute, squared, count = self._sums.tolist()
        return {"mae": absolute / count, "rmse": math.sqrt(squared / count)}
