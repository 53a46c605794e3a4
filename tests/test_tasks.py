"""Tasks: building them from the config, and the build-time check that each head, loss and metric fits its targets."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from omegaconf import DictConfig
from torch import nn

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.backbones.mlp import mlp
from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.errors import ConfigError
from mtl_train.heads.binary import BinaryHead
from mtl_train.heads.classification import ClassificationHead
from mtl_train.losses.binary_cross_entropy import BinaryCrossEntropy
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.metrics.binary import BinaryMetrics, MultiLabelMetrics
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.metrics.reconstruction import ReconstructionMetrics
from mtl_train.metrics.regression import RegressionMetrics
from mtl_train.model import MultiTaskModel
from mtl_train.tasks import Task, build_tasks, check_tasks_fit, fit_problem, label_problem
from mtl_train.utils.instantiate import instantiate

TINY_ECG = ["debug=smoke", "dataset.num_train=4", "dataset.num_val=2", "dataset.num_test=2", "dataset.duration_s=4.0",
            "dataset.sample_rate=100"]  # 400-sample segments


def build(cfg: DictConfig) -> tuple[MultiTaskModel, list[Task], MultiTaskData]:
    """Data, tasks and model of ``cfg``, built as train_model builds them."""
    data = instantiate(cfg.dataset, "dataset").build()
    tasks = build_tasks(cfg.task, data.target_names)
    names = [task.name for task in tasks]
    backbone = instantiate(cfg.backbone, "backbone", task_names=names, in_channels=data.in_channels,
                           input_size=data.spatial_size)
    heads = {name: instantiate(cfg.task[name].head, f"task.{name}.head", in_channels=backbone.out_channels,
                               spatial_dims=backbone.spatial_dims) for name in names}
    return MultiTaskModel(backbone, heads), tasks, data


def check(overrides: list[str]) -> None:
    check_tasks_fit(*build(compose_config([*TINY_ECG, *overrides])))


# --- through compose and build ------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    [],
    ["heads@task.rhythm.head=multi_lenet_classification"],
    ["heads@task.denoise.head=dense"],
    ["loss@task.rhythm.loss=focal", "loss@task.denoise.loss=huber"],
    ["task=ecg_full", "heads@task.waves.head=reconstruction"],
], ids=["default", "rhythm=multi_lenet_classification", "denoise=dense", "focal+huber", "waves=reconstruction"])
def test_heads_and_losses_that_fit_pass(overrides: list[str]) -> None:
    check(overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss@task.rhythm.loss=mse"],
     "task.rhythm.loss=MSELoss does not fit task rhythm: head ClassificationHead outputs (N, 4), targets are class "
     "indices (N,); use loss@task.rhythm.loss=cross_entropy or focal"),
    (["heads@task.rhythm.head=dense"],
     "task.rhythm.head=DenseHead does not fit task rhythm: it outputs (N, 4, 400), targets are class indices (N,), "
     "which need logits (N, C); use heads@task.rhythm.head=classification"),
    (["task=ecg_full", "heads@task.heart_rate.head=classification"],  # (N, 1) against (N,) would broadcast
     "task.heart_rate.head=ClassificationHead does not fit task heart_rate: it outputs (N, 1), targets are values "
     "(N,), which need predictions (N,); use heads@task.heart_rate.head=regression"),
    (["task=ecg_full", "heads@task.waves.head=classification"],
     "task.waves.head=ClassificationHead does not fit task waves: it outputs (N, 4), targets are class indices "
     "(N, 400), which need logits (N, C, 400); use heads@task.waves.head=dense"),
    (["heads@task.denoise.head=regression"],
     "task.denoise.head=RegressionHead does not fit task denoise: it outputs (N,), targets are values (N, 1, 400), "
     "which need predictions (N, 1, 400); use heads@task.denoise.head=reconstruction"),
    (["loss@task.denoise.loss=cross_entropy"],  # soft-label cross-entropy over one channel: always 0
     "task.denoise.loss=CrossEntropy does not fit task denoise: head ReconstructionHead outputs (N, 1, 400), targets "
     "are values (N, 1, 400); use loss@task.denoise.loss=mse, l1 or huber"),
    (["task=ecg_full", "task.waves.num_outputs=3"],
     "task.waves.num_outputs: head DenseHead outputs 3 classes, but the targets of task waves hold class indices up "
     "to 3; set task.waves.num_outputs=4"),
], ids=["mse on classes", "dense head on classes", "classification head on bpm", "classification head on waves",
        "regression head on a waveform", "cross-entropy on a waveform", "too few classes"])
def test_a_head_or_loss_that_does_not_fit_is_one_message(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check(overrides)
    assert str(error.value) == message


# --- on hand-made outputs and targets -----------------------------------------------------------------------


def test_a_regression_head_with_too_few_values_per_sample_names_num_outputs() -> None:
    """A vector target (N, 3) under the regression head's default num_outputs (1): (N,) predictions."""
    problem = fit_problem(task(nn.MSELoss(), RegressionMetrics()), "RegressionHead", torch.randn(2),
                          torch.randn(2, 3), largest_class=None)
    assert problem == ("task.t.num_outputs: head RegressionHead outputs (N,), but the targets of task t are values "
                       "(N, 3); set task.t.num_outputs=3")


def task(loss: nn.Module, metric=None) -> Task:
    return Task("t", "y", loss, metric or ClassificationMetrics(num_classes=4))


def test_a_loss_that_raises_is_reported_with_its_reason() -> None:
    class Picky(nn.Module):
        def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            raise ValueError("needs a mask")

    problem = fit_problem(task(Picky()), "H", torch.zeros(2, 4), torch.tensor([0, 3]), largest_class=3)
    assert problem == "task.t.loss=Picky does not fit task t: head H outputs (N, 4), targets are class indices (N,) " \
                      "(needs a mask)"


def test_a_loss_that_returns_no_scalar_is_reported() -> None:
    problem = fit_problem(task(nn.MSELoss(reduction="none"), RegressionMetrics()), "H", torch.zeros(2),
                          torch.ones(2), largest_class=None)
    assert problem == "task.t.loss=MSELoss must return one number (a scalar tensor), got torch.Size([2]); use a " \
                      "loss that averages (reduction mean)"


def test_a_metric_that_does_not_fit_is_reported_and_left_empty() -> None:
    metric = ClassificationMetrics(num_classes=3)
    problem = fit_problem(task(CrossEntropy(), metric), "H", torch.zeros(2, 4), torch.tensor([0, 3]), largest_class=3)
    assert problem.startswith("task.t.metric=ClassificationMetrics does not fit task t: head H outputs (N, 4), "
                              "targets are class indices (N,) (prediction must be logits of shape (B, 3, ...)")
    metric.update(torch.zeros(1, 3), torch.tensor([2]))
    assert metric.compute()["accuracy"] == 0.0  # nothing of the check's batch was kept


def test_a_fitting_task_has_no_problem() -> None:
    assert fit_problem(task(CrossEntropy()), "H", torch.randn(2, 4), torch.tensor([0, 3]), largest_class=3) is None
    values = fit_problem(task(nn.L1Loss(), ReconstructionMetrics(data_range=1.0)), "H", torch.rand(2, 1, 5),
                         torch.rand(2, 1, 5), largest_class=None)
    assert values is None


def test_the_check_changes_no_state_of_the_model_or_the_random_generators() -> None:
    backbone = hard_cnn(["t"], in_channels=1, input_size=[8], spatial_dims=1, channels=[4], kernel_size=3)  # BatchNorm
    model = MultiTaskModel(backbone, {"t": ClassificationHead(4, 1, num_classes=4, dropout=0.5)})
    split = TensorSplit(torch.randn(6, 1, 8), {"y": torch.tensor([0, 1, 2, 3, 0, 1])})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_tasks_fit(model, [task(CrossEntropy())], MultiTaskData(split, split.head(2), split.head(2)))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


# --- 0/1 labels: binary and multi-label tasks ----------------------------------------------------------------


def label_task(metric=None, task_type: str | None = None) -> Task:
    return Task("t", "y", BinaryCrossEntropy(), metric or BinaryMetrics(), task_type=task_type)


@pytest.mark.parametrize(("output", "target", "metric"), [
    (torch.randn(2), torch.tensor([0, 1]), BinaryMetrics()),
    (torch.randn(2), torch.tensor([0.0, 1.0]), BinaryMetrics()),
    (torch.randn(2, 3), torch.tensor([[0, 1, 1], [1, 0, 0]]), MultiLabelMetrics(num_labels=3)),
], ids=["binary int64", "binary float", "multilabel int64"])
def test_integer_or_float_0_1_labels_fit_logits_of_their_shape(output: torch.Tensor, target: torch.Tensor,
                                                               metric) -> None:
    assert fit_problem(label_task(metric), "BinaryHead", output, target, largest_class=None) is None


@pytest.mark.parametrize(("output", "target", "message"), [
    (torch.randn(2, 2), torch.tensor([0, 1]),
     "task.t.head=ClassificationHead does not fit task t: it outputs (N, 2), targets are 0/1 labels (N,), which need "
     "logits (N,); use heads@task.t.head=binary"),
    (torch.randn(2), torch.tensor([[0, 1, 1], [1, 0, 0]]),
     "task.t.head=ClassificationHead does not fit task t: it outputs (N,), targets are 0/1 labels (N, 3), which need "
     "logits (N, 3); use heads@task.t.head=binary with task.t.num_outputs=3"),
    (torch.randn(2, 2), torch.tensor([[0, 1, 1], [1, 0, 0]]),
     "task.t.num_outputs: head ClassificationHead outputs 2 logits per sample, but the targets of task t hold 3 "
     "labels; set task.t.num_outputs=3"),
], ids=["binary", "multilabel", "too few labels"])
def test_a_head_that_does_not_give_one_logit_per_label_is_one_message(output: torch.Tensor, target: torch.Tensor,
                                                                     message: str) -> None:
    assert fit_problem(label_task(), "ClassificationHead", output, target, largest_class=None) == message


def label_data(train: torch.Tensor, val: torch.Tensor, test: torch.Tensor) -> MultiTaskData:
    """Four-feature inputs with target ``y`` of the given values per split."""
    return MultiTaskData(*(TensorSplit(torch.randn(len(y), 4), {"y": y}) for y in (train, val, test)))


def check_labels_fit(task: Task, data: MultiTaskData) -> None:
    backbone = mlp(["t"], in_channels=4, input_size=[], hidden=[8])
    check_tasks_fit(MultiTaskModel(backbone, {"t": BinaryHead(8, 0)}), [task], data)


@pytest.mark.parametrize(("task", "data", "message"), [
    (label_task(), label_data(torch.tensor([0, 3, 1]), torch.tensor([0, 1]), torch.tensor([1, 0])),
     "task.t.loss=BinaryCrossEntropy needs 0/1 labels, but target 'y' holds 3 (in the train split); for class "
     "indices use loss@task.t.loss=cross_entropy"),
    (label_task(task_type="binary"), label_data(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.0]),
                                                torch.tensor([1.0, 0.0])),
     "task.t.type=binary needs 0/1 labels (N,), but target 'y' holds 0.5 (in the val split); use type regression"),
    (label_task(), label_data(torch.tensor([0, 1]), torch.tensor([0, 0, 0]), torch.tensor([1, 0])),
     "task t (target 'y'): the val split holds no positive (1) label, so AUROC is undefined there; give every split "
     "positives and negatives (more rows, or a stratified dataset.split)"),
], ids=["bce on class indices", "binary type on probabilities", "val split without positives"])
def test_0_1_targets_that_do_not_fit_are_one_message(task: Task, data: MultiTaskData, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_labels_fit(task, data)
    assert str(error.value) == message


def test_a_multilabel_split_needs_one_label_with_both_values() -> None:
    """Label 0 has only positives in val, label 1 only negatives: no label has an AUROC there."""
    labels = torch.tensor([[1, 0], [0, 1]])
    task = Task("t", "y", BinaryCrossEntropy(), MultiLabelMetrics(num_labels=2))
    problem = label_problem(task, {"train": labels, "val": torch.tensor([[1, 0], [1, 0]]), "test": labels})
    assert problem.startswith("task t (target 'y'): the val split holds no label column with both a positive and a "
                              "negative")
    assert label_problem(task, {"train": labels, "val": torch.tensor([[1, 0], [0, 0]]), "test": labels}) is None
