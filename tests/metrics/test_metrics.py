"""Per-task metrics against hand-computed confusion matrices, errors and PSNRs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_train.errors import ConfigError
from mtl_train.metrics.base import TaskMetric
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.metrics.reconstruction import ReconstructionMetrics
from mtl_train.metrics.regression import RegressionMetrics
from mtl_train.metrics.segmentation import SegmentationMetrics


def logits_for(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax over dim 1 is ``pred``: (B, *spatial) -> (B, C, *spatial)."""
    return 5.0 * F.one_hot(pred, num_classes).movedim(-1, 1).float()


# Confusion matrix (rows = true, columns = predicted):
#            p0 p1 p2   support
#   t0     [  2, 1, 0 ]   3
#   t1     [  0, 2, 1 ]   3
#   t2     [  1, 0, 3 ]   4
# accuracy = (2 + 2 + 3) / 10 = 0.7
# F1_c = 2TP / (2TP + FP + FN):
#   c0: TP 2, FP 1 (t2->p0), FN 1 -> 4/6 = 2/3
#   c1: TP 2, FP 1 (t0->p1), FN 1 -> 4/6 = 2/3
#   c2: TP 3, FP 1 (t1->p2), FN 1 -> 6/8 = 3/4
# macro-F1 = (2/3 + 2/3 + 3/4) / 3 = 25/36
CLS_TARGET = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
CLS_PRED = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])


def test_classification_hand_computed() -> None:
    metric = ClassificationMetrics(num_classes=3)
    metric.update(logits_for(CLS_PRED, 3), CLS_TARGET)
    assert metric.confusion_matrix().tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    scores = metric.compute()
    assert scores["accuracy"] == pytest.approx(0.7)
    assert scores["macro_f1"] == pytest.approx(25 / 36)


def test_classification_class_absent_everywhere_is_excluded_from_macro_f1() -> None:
    # Class 3 never occurs as target or prediction: its F1 is undefined and left out, so the
    # scores equal the 3-class case (including it as 0 would give 25/48).
    metric = ClassificationMetrics(num_classes=4)
    metric.update(logits_for(CLS_PRED, 4), CLS_TARGET)
    scores = metric.compute()
    assert scores["accuracy"] == pytest.approx(0.7)
    assert scores["macro_f1"] == pytest.approx(25 / 36)


def test_classification_two_updates_equal_one_on_concatenation() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator)
    target = torch.randint(0, 5, (50,), generator=generator)
    whole, parts = ClassificationMetrics(5), ClassificationMetrics(5)
    whole.update(logits, target)
    parts.update(logits[:17], target[:17])
    parts.update(logits[17:], target[17:])
    assert torch.equal(parts.confusion_matrix(), whole.confusion_matrix())
    assert parts.compute() == whole.compute()


def test_classification_reset_and_errors() -> None:
    metric = ClassificationMetrics(3)
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(logits_for(CLS_PRED, 3), CLS_TARGET)
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match=r"\(B, 3"):
        metric.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="target must have shape"):
        metric.update(torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer class indices"):
        metric.update(torch.zeros(4, 3), torch.zeros(4))
    metric.update(torch.zeros(2, 3), torch.tensor([0, 3]))  # label 3 is out of range
    with pytest.raises(ValueError, match=r"1 target values were outside \[0, 3\)"):
        metric.compute()
    with pytest.raises(ConfigError, match="metric.num_classes must be >= 2, got 1"):
        ClassificationMetrics(1)


def test_segmentation_2d_hand_computed() -> None:
    # target        pred
    # 0 0 1         0 1 1
    # 1 1 1         0 1 1
    # class 0: |T|=2, |P|=2, TP=1 (top-left)           -> IoU = 1 / (2+2-1) = 1/3
    # class 1: |T|=4, |P|=4, TP=3 (0,2),(1,1),(1,2)     -> IoU = 3 / (4+4-3) = 3/5
    # class 2: absent from both (empty union) -> excluded; mIoU = (1/3 + 3/5) / 2 = 7/15
    # pixel accuracy = 4 correct / 6 = 2/3
    target = torch.tensor([[[0, 0, 1], [1, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [0, 1, 1]]])
    metric = SegmentationMetrics(num_classes=3)
    metric.update(logits_for(pred, 3), target)
    scores = metric.compute()
    assert scores["miou"] == pytest.approx(7 / 15)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3)


def test_segmentation_1d_hand_computed_over_two_updates() -> None:
    # sample 0: target 0 0 1 1, pred 0 1 1 1
    # sample 1: target 1 1 1 1, pred 1 1 1 0
    # class 0: |T|=2, |P|=2, TP=1                 -> IoU = 1/3
    # class 1: |T|=6, |P|=6, TP=5                 -> IoU = 5/7
    # mIoU = (1/3 + 5/7) / 2 = 11/21; pixel accuracy = 6/8
    target = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    metric = SegmentationMetrics(num_classes=2)
    metric.update(logits_for(pred[:1], 2), target[:1])
    metric.update(logits_for(pred[1:], 2), target[1:])
    scores = metric.compute()
    assert scores["miou"] == pytest.approx(11 / 21)
    assert scores["pixel_accuracy"] == pytest.approx(0.75)


def test_segmentation_rejects_non_dense_prediction() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        SegmentationMetrics(2).update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))


def test_reconstruction_constant_error() -> None:
    # every element off by 0.1 -> MSE 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB
    target = torch.rand(4, 3, 5, 5)
    metric = ReconstructionMetrics()
    metric.update(target + 0.1, target)
    scores = metric.compute()
    assert scores["mse"] == pytest.approx(0.01)
    assert scores["psnr"] == pytest.approx(20.0)


def test_reconstruction_psnr_is_mean_over_samples() -> None:
    # sample 0 off by 0.1 (MSE 1e-2, 20 dB), sample 1 off by 0.01 (MSE 1e-4, 40 dB), over 2 updates:
    # mse = (1e-2 + 1e-4) / 2 = 0.00505 (equal sizes); psnr = (20 + 40) / 2 = 30 dB
    # (the PSNR of the pooled MSE would be 10 log10(1 / 0.00505) = 22.97 dB).
    target = torch.zeros(2, 8, dtype=torch.float64)
    metric = ReconstructionMetrics()
    metric.update(target[:1] + 0.1, target[:1])
    metric.update(target[1:] + 0.01, target[1:])
    scores = metric.compute()
    assert scores["mse"] == pytest.approx(0.00505)
    assert scores["psnr"] == pytest.approx(30.0)


def test_reconstruction_data_range_and_exact_match() -> None:
    # data_range 255, error 2.55 -> 10 log10(255^2 / 2.55^2) = 10 log10(1e4) = 40 dB
    target = torch.full((3, 4), 100.0)
    metric = ReconstructionMetrics(data_range=255.0)
    metric.update(target + 2.55, target)
    assert metric.compute()["psnr"] == pytest.approx(40.0)
    # an exact reconstruction is clamped to MSE 1e-10 -> 100 dB at data_range 1
    metric = ReconstructionMetrics()
    metric.update(target, target)
    assert metric.compute() == {"mse": 0.0, "psnr": pytest.approx(100.0)}


def test_reconstruction_errors() -> None:
    with pytest.raises(ValueError, match="before any update"):
        ReconstructionMetrics().compute()
    with pytest.raises(ValueError, match="same shape"):
        ReconstructionMetrics().update(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="metric.data_range must be > 0, got 0"):
        ReconstructionMetrics(data_range=0)


def test_regression_hand_computed() -> None:
    # errors = [-1, 0, -2, 4]: MAE = 7/4 = 1.75; RMSE = sqrt((1 + 0 + 4 + 16) / 4) = sqrt(5.25)
    target = torch.tensor([2.0, 2.0, 5.0, 0.0])
    prediction = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (B, 1) is accepted
    metric = RegressionMetrics()
    metric.update(prediction[:3], target[:3])
    metric.update(prediction[3:], target[3:])
    scores = metric.compute()
    assert scores["mae"] == pytest.approx(1.75)
    assert scores["rmse"] == pytest.approx(math.sqrt(5.25))


def test_regression_errors() -> None:
    metric = RegressionMetrics()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match=r"the same shape \(B, ...\), got \(4, 2\) and \(4,\)"):
        metric.update(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"got \(4,\) and \(3,\)"):
        metric.update(torch.zeros(4), torch.zeros(3))


def test_regression_of_vectors_and_maps_is_over_every_element() -> None:
    # errors [[1, -1], [0, 2]] and a (1, 1, 2) map with errors [3, -3]: MAE (1 + 1 + 0 + 2) / 4 = 1, then the
    # map alone (3 + 3) / 2 = 3; RMSE sqrt((1 + 1 + 0 + 4) / 4) = sqrt(1.5), sqrt(9) = 3
    vectors = RegressionMetrics()
    vectors.update(torch.tensor([[1.0, -1.0], [0.0, 2.0]]), torch.zeros(2, 2))
    assert vectors.compute() == pytest.approx({"mae": 1.0, "rmse": math.sqrt(1.5)})
    maps = RegressionMetrics()
    maps.update(torch.tensor([[[3.0, -3.0]]]), torch.zeros(1, 1, 2))
    assert maps.compute() == pytest.approx({"mae": 3.0, "rmse": 3.0})


@pytest.mark.parametrize(
    "metric", [ClassificationMetrics(3), SegmentationMetrics(3), ReconstructionMetrics(), RegressionMetrics()]
)
def test_contract(metric: TaskMetric) -> None:
    assert metric.primary in metric.higher_is_better
    batches = {
        ClassificationMetrics: (torch.randn(4, 3), torch.randint(0, 3, (4,))),
        SegmentationMetrics: (torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))),
        ReconstructionMetrics: (torch.rand(4, 1, 5, 5), torch.rand(4, 1, 5, 5)),
        RegressionMetrics: (torch.randn(4), torch.randn(4)),
    }
    metric.update(*batches[type(metric)])
    scores = metric.compute()
    assert set(scores) == set(metric.higher_is_better)
    assert all(type(value) is float for value in scores.values())
