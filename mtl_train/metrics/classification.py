"""Classification metrics: accuracy and macro-F1 from a confusion matrix."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtl_train.metrics.base import ConfusionMatrixMetric


class ClassificationMetrics(ConfusionMatrixMetric):
    """Accuracy and macro-F1 of argmax predictions.

    ``prediction``: logits ``(B, C)``; ``target``: class indices ``(B,)`` (int64).

    * ``accuracy``: correctly classified samples / all samples.
    * ``macro_f1``: unweighted mean over classes of ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.
      A class with no true and no predicted samples (``2 TP + FP + FN == 0``) has undefined F1 and
      is excluded from the mean, so declaring extra unused classes does not change the score.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True, "macro_f1": True}
    primary: ClassVar[str] = "accuracy"

    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.ndim != 2:
            raise ValueError(f"prediction must be logits of shape (B, C), got {tuple(prediction.shape)}")
        super().update(prediction, target)

    def compute(self) -> dict[str, float]:
        matrix = self.confusion_matrix().double()
        true_positives = matrix.diagonal()
        denominator = matrix.sum(dim=1) + matrix.sum(dim=0)  # 2 TP + FN + FP, per class
        present = denominator > 0
        f1 = 2 * true_positives[present] / denominator[present]
        return {
            "accuracy": (true_positives.sum() / matrix.sum()).item(),
            "macro_f1": f1.mean().item(),
        }
