"""Reconstruction metrics (denoising, autoencoding): MSE and PSNR."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.metrics.base import TaskMetric

MIN_SAMPLE_MSE = 1e-10
"""Per-sample MSE floor for PSNR, so a perfect reconstruction scores a finite value."""


class ReconstructionMetrics(TaskMetric):
    """MSE over all elements and mean per-sample PSNR.

    ``prediction`` and ``target``: the same shape ``(B, ...)``.

    * ``mse``: mean squared error over every element seen.
    * ``psnr``: mean over samples of ``10 * log10(data_range**2 / mse_i)``, where ``mse_i`` is the
      sample's own MSE clamped to at least ``1e-10`` (so an exact reconstruction gives a finite
      ``10 * log10(data_range**2 * 1e10)``, 100 dB for ``data_range=1``).

    Args:
        data_range: The span of valid values (1.0 for images in [0, 1], 255 for uint8 scale).
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"mse": False, "psnr": True}
    primary: ClassVar[str] = "psnr"

    def __init__(self, data_range: float = 1.0) -> None:
        if not data_range > 0:
            raise ConfigError(f"metric.data_range must be > 0, got {data_range}")
        self.data_range = float(data_range)
        self.reset()

    def reset(self) -> None:
        self._sums: Tensor | None = None  # float64 (2,): [sum of squared errors, sum of per-sample PSNR]
        self._elements = 0
        self._samples = 0

    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape != target.shape or prediction.ndim == 0:
            raise ValueError(
                f"prediction and target must have the same shape (B, ...), "
                f"got {tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        squared = (prediction.detach().double() - target.double()).square()
        per_sample = squared.reshape(squared.shape[0], math.prod(squared.shape[1:]))
        sample_mse = per_sample.mean(dim=1).clamp(min=MIN_SAMPLE_MSE)
        psnr = 10 * torch.log10(self.data_range**2 / sample_mse)
        batch = torch.stack([squared.sum(), psnr.sum()])
        self._sums = batch if self._sums is None else self._sums + batch
        self._elements += squared.numel()
        self._samples += squared.shape[0]

    def compute(self) -> dict[str, float]:
        if self._sums is None or self._samples == 0:
            raise ValueError("ReconstructionMetrics.compute() called before any update()")
        squared_error, psnr = self._sums.tolist()
        return {"mse": squared_error / self._elements, "psnr": psnr / self._samples}
