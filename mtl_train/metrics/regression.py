"""Scalar regression metrics: MAE and RMSE."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mtl_train.metrics.base import TaskMetric


def _as_vector(values: Tensor, name: str) -> Tensor:
    """``(B,)`` or ``(B, 1)`` as ``(B,)``; anything else is a ValueError (it would broadcast silently)."""
    if values.ndim == 2 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"{name} must have shape (B,) or (B, 1), got {tuple(values.shape)}")
    return values


class RegressionMetrics(TaskMetric):
    """Mean absolute error and root mean squared error of one scalar per sample.

    ``prediction``: ``(B,)`` or ``(B, 1)``; ``target``: ``(B,)`` (``(B, 1)`` is accepted too).

    * ``mae``: mean of ``|prediction - target|``.
    * ``rmse``: square root of the mean of ``(prediction - target)**2``.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"mae": False, "rmse": False}
    primary: ClassVar[str] = "mae"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: Tensor | None = None  # float64 (2,): [sum of |error|, sum of error**2]
        self._samples = 0

    def update(self, prediction: Tensor, target: Tensor) -> None:
        prediction = _as_vector(prediction, "prediction")
        target = _as_vector(target, "target")
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has {prediction.shape[0]} rows, target has {target.shape[0]}")
        error = prediction.detach().double() - target.double()
        batch = torch.stack([error.abs().sum(), error.square().sum()])
        self._sums = batch if self._sums is None else self._sums + batch
        self._samples += error.shape[0]

    def compute(self) -> dict[str, float]:
        if self._sums is None or self._samples == 0:
            raise ValueError("RegressionMetrics.compute() called before any update()")
        absolute, squared = self._sums.tolist()
        return {"mae": absolute / self._samples, "rmse": math.sqrt(squared / self._samples)}
