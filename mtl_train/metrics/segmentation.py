"""Dense (per-pixel / per-position) segmentation metrics: mIoU and pixel accuracy."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtl_train.metrics.base import ConfusionMatrixMetric


class SegmentationMetrics(ConfusionMatrixMetric):
    """Mean IoU and pixel accuracy of per-element argmax predictions.

    ``prediction``: logits ``(B, C, *spatial)`` with one or more spatial dims (``(B, C, L)``,
    ``(B, C, H, W)``, ...); ``target``: class indices ``(B, *spatial)`` (int64).

    * ``miou``: mean over classes of ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, taken over the
      classes whose union is non-empty (a class absent from both prediction and target is excluded).
    * ``pixel_accuracy``: correctly classified elements / all elements.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"miou": True, "pixel_accuracy": True}
    primary: ClassVar[str] = "miou"

    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.ndim < 3:
            raise ValueError(f"prediction must be logits of shape (B, C, *spatial), got {tuple(prediction.shape)}")
        super().update(prediction, target)

    def compute(self) -> dict[str, float]:
        matrix = self.confusion_matrix().double()
        intersection = matrix.diagonal()
        union = matrix.sum(dim=1) + matrix.sum(dim=0) - intersection
        present = union > 0
        return {
            "miou": (intersection[present] / union[present]).mean().item(),
            "pixel_accuracy": (intersection.sum() / matrix.sum()).item(),
        }
