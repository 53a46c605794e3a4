"""Missing labels (mtl_train/labels.py): masked losses and metrics on hand-computed cases, and the label checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config
from data.test_files import FILES_OVERRIDES, export_small_ecg
from torch import nn

from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.errors import ConfigError
from mtl_train.labels import check_labels, labelled_mask, masked_mean_loss
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.losses.focal import FocalLoss
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.metrics.regression import RegressionMetrics
from mtl_train.metrics.segmentation import SegmentationMetrics
from mtl_train.tasks import Task
from mtl_train.train import train

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
CLASSES = torch.tensor([0, -1, 1])  # the middle sample has no label
# Cross-entropy of the two labelled samples by hand: -log(e^2 / (e^2 + 2)) and -log(e / (e + 2)).
LOSS_FIRST, LOSS_LAST = math.log(1 + 2 * math.exp(-2)), math.log(1 + 2 / math.e)


def task(loss: nn.Module, missing_label: float | None, metric=None) -> Task:
    return Task("t", "y", loss, metric or ClassificationMetrics(3), missing_label=missing_label)


def test_cross_entropy_is_the_mean_over_labelled_samples() -> None:
    loss = task(CrossEntropy(), -1).compute_loss(LOGITS, CLASSES)
    assert loss.item() == pytest.approx((LOSS_FIRST + LOSS_LAST) / 2, rel=1e-6)


def test_class_weighted_cross_entropy_keeps_its_weighted_mean_over_labelled_samples() -> None:
    """sum w_y l / sum w_y over the labelled samples: (1 * l_0 + 2 * l_2) / (1 + 2), PyTorch's weighted mean."""
    loss = task(CrossEntropy(class_weights=[1.0, 2.0, 3.0]), -1).compute_loss(LOGITS, CLASSES)
    assert loss.item() == pytest.approx((LOSS_FIRST + 2 * LOSS_LAST) / 3, rel=1e-6)


def test_focal_loss_is_its_plain_mean_over_labelled_samples() -> None:
    """gamma = 0 is cross-entropy; focal loss divides by the element count, also with class weights."""
    loss = task(FocalLoss(gamma=0.0, class_weights=[1.0, 2.0, 3.0]), -1).compute_loss(LOGITS, CLASSES)
    assert loss.item() == pytest.approx((LOSS_FIRST + 2 * LOSS_LAST) / 2, rel=1e-6)


def test_regression_with_nan_for_missing_values() -> None:
    """Errors 1 and 2 on the labelled samples: MSE (1 + 4) / 2; the NaN target adds nothing."""
    prediction = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([2.0, math.nan, 5.0])
    assert task(nn.MSELoss(), math.nan).compute_loss(prediction, target).item() == pytest.approx(2.5)


def test_vector_targets_are_masked_element_by_element() -> None:
    """(N, 2) targets with one missing element: L1 over the three labelled elements, (1 + 0 + 3) / 3."""
    prediction = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([[2.0, math.nan], [1.0, 4.0]])
    assert task(nn.L1Loss(), math.nan).compute_loss(prediction, target).item() == pytest.approx(4 / 3)


def test_a_batch_without_labels_gives_zero_loss_and_zero_gradient() -> None:
    logits = LOGITS.clone().requires_grad_()
    loss = task(CrossEntropy(), -1).compute_loss(logits, torch.full((3,), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_the_gradient_reaches_labelled_samples_only() -> None:
    logits = LOGITS.clone().requires_grad_()
    task(CrossEntropy(), -1).compute_loss(logits, CLASSES).backward()
    assert logits.grad[1].abs().sum().item() == 0.0
    assert logits.grad[0].abs().sum().item() > 0 and logits.grad[2].abs().sum().item() > 0


def test_without_missing_label_the_loss_is_unchanged() -> None:
    targets = torch.tensor([0, 2, 1])
    assert torch.equal(task(CrossEntropy(), None).compute_loss(LOGITS, targets), CrossEntropy()(LOGITS, targets))


def test_classification_metric_counts_labelled_samples_only() -> None:
    """Predictions (argmax) 0, 0, 1 against labels 0, -, 2: one of the two labelled samples is right."""
    metric = ClassificationMetrics(3)
    task(CrossEntropy(), -1, metric).update_metric(LOGITS, torch.tensor([0, -1, 2]))
    assert metric.compute()["accuracy"] == pytest.approx(0.5)


def test_segmentation_metric_skips_unlabelled_pixels() -> None:
    """Two pixels predicted 1 and 0; the first is labelled 1, the second unlabelled: accuracy 1, not an error."""
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]).transpose(1, 2)  # (1, C=2, L=2): argmax 1, 0
    metric = SegmentationMetrics(2)
    task(CrossEntropy(), -1, metric).update_metric(logits, torch.tensor([[1, -1]]))
    assert metric.compute()["pixel_accuracy"] == 1.0
    assert metric.confusion_matrix().sum().item() == 1


def test_regression_metric_skips_unlabelled_samples() -> None:
    metric = RegressionMetrics()
    task(nn.MSELoss(), math.nan, metric).update_metric(torch.tensor([1.0, 2.0, 3.0]),
                                                        torch.tensor([2.0, math.nan, 6.0]))
    assert metric.compute() == {"mae": pytest.approx(2.0), "rmse": pytest.approx(math.sqrt(5.0))}


def test_labelled_mask() -> None:
    assert labelled_mask(torch.tensor([0, -1, 3]), -1).tolist() == [True, False, True]
    assert labelled_mask(torch.tensor([0.5, math.nan]), math.nan).tolist() == [True, False]


def test_a_loss_without_reduction_cannot_mask() -> None:
    class Plain(nn.Module):
        def forward(self, prediction, target):
            return (prediction - target).abs().mean()

    with pytest.raises(ConfigError, match=r"task.t.missing_label=-1 needs a loss .*task.t.loss=Plain"):
        task(Plain(), -1)


def test_masked_mean_loss_of_a_torch_loss_leaves_its_reduction_as_it_was() -> None:
    loss = nn.MSELoss()
    masked_mean_loss(loss, torch.ones(2), torch.zeros(2), torch.tensor([True, False]))
    assert loss.reduction == "mean"


def data(train: torch.Tensor, val: torch.Tensor | None = None) -> MultiTaskData:
    def split(target: torch.Tensor) -> TensorSplit:
        return TensorSplit(torch.zeros(len(target), 1), {"y": target})

    labelled = torch.tensor([0, 1]) if not train.is_floating_point() else torch.tensor([0.0, 1.0])
    return MultiTaskData(split(train), split(labelled if val is None else val), split(labelled))


def test_check_labels_names_nan_targets_without_missing_label() -> None:
    with pytest.raises(ConfigError, match=r"task t \(target 'y'\): the train targets hold NaN; .*"
                                          r"set task.t.missing_label=nan \(in YAML: .nan\)"):
        check_labels([task(nn.MSELoss(), None)], data(torch.tensor([1.0, math.nan])))


def test_check_labels_names_a_nan_missing_label_for_class_indices() -> None:
    with pytest.raises(ConfigError, match=r"task.t.missing_label=nan, but target 'y' holds integer class "
                                          r"indices; .*task.t.missing_label=-1"):
        check_labels([task(CrossEntropy(), math.nan)], data(torch.tensor([0, 1])))


def test_check_labels_names_a_negative_class_index() -> None:
    with pytest.raises(ConfigError, match=r"task t \(target 'y'\): train row 1 holds the class index -2, outside "
                                          r"\[0, num_outputs\); if -2 marks a missing label, set "
                                          r"task.t.missing_label=-2"):
        check_labels([task(CrossEntropy(), None)], data(torch.tensor([0, -2, 1])))
    with pytest.raises(ConfigError, match=r"val row 0 holds the class index -3"):
        check_labels([task(CrossEntropy(), -1)], data(torch.tensor([0, -1]), val=torch.tensor([-3, 1])))


def test_check_labels_names_a_task_without_train_labels() -> None:
    with pytest.raises(ConfigError, match=r"task t \(target 'y'\) has no label in the train split .*remove the "
                                          r"task from the task set"):
        check_labels([task(CrossEntropy(), -1)], data(torch.tensor([-1, -1])))


def test_check_labels_accepts_partly_labelled_data() -> None:
    check_labels([task(CrossEntropy(), -1)], data(torch.tensor([0, -1, 1])))
    check_labels([task(nn.MSELoss(), math.nan)], data(torch.tensor([0.5, math.nan])))


def ecg_files_with_missing_rhythm_labels(tmp_path) -> list[str]:
    """The small exported ECG (16 train, 8 val, 8 test rows) with no rhythm label on train rows 0-7, val rows 0-2
    and test rows 0-3; the overrides that train on it with ``missing_label: -1``."""
    export_small_ecg(tmp_path / "ecg.npz")
    arrays = dict(np.load(tmp_path / "ecg.npz"))
    rhythm = arrays["rhythm"].astype(np.int64)
    for code, count in ((0, 8), (1, 3), (2, 4)):  # the split array: 0 train, 1 val, 2 test
        rows = np.flatnonzero(arrays["split"] == code)
        assert len(rows) == (16, 8, 8)[code]
        rhythm[rows[:count]] = -1
    np.savez(tmp_path / "ecg.npz", **{**arrays, "rhythm": rhythm})
    return [*FILES_OVERRIDES, f"dataset.path={tmp_path / 'ecg.npz'}", "+task.rhythm.missing_label=-1"]


def test_a_run_with_missing_labels_measures_the_labelled_rows_only(tmp_path) -> None:
    """Accuracy over the 4 labelled test rows is a multiple of 1/4 and over the 5 labelled val rows one of 1/5 (over
    all 8 rows it would be a multiple of 1/8); the rhythm loss stays finite in every step."""
    overrides = ecg_files_with_missing_rhythm_labels(tmp_path)
    run = ["trainer.max_steps=4", "trainer.batch_size=8", "trainer.device=cpu", "trainer.plots=false",
           "trainer.progress=none", "trainer.log_every=1"]
    summary = train(compose_config([*overrides, *run], tmp_path / "run"))
    test_accuracy = summary["final"]["test"]["rhythm"]["accuracy"]
    val_accuracy = summary["final"]["val"]["rhythm"]["accuracy"]
    assert (test_accuracy * 4) == pytest.approx(round(test_accuracy * 4))
    assert (val_accuracy * 5) == pytest.approx(round(val_accuracy * 5))
    losses = (tmp_path / "run" / "losses.csv").read_text().splitlines()
    assert len(losses) == 5 and "nan" not in "".join(losses[1:]).lower()


def test_regression_metric_masks_vector_targets_element_by_element() -> None:
    """(N, 2) values with one missing element: errors 1, 0 and 3 on the labelled ones, MAE 4/3, RMSE sqrt(10/3)."""
    metric = RegressionMetrics()
    task(nn.L1Loss(), math.nan, metric).update_metric(torch.ones(2, 2), torch.tensor([[2.0, math.nan], [1.0, 4.0]]))
    assert metric.compute() == {"mae": pytest.approx(4 / 3), "rmse": pytest.approx(math.sqrt(10 / 3))}
