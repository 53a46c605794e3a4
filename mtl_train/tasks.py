"""Tasks: which target a task predicts, its loss and its metrics, built from ``cfg.task``.

Each key of ``cfg.task`` is a task name; its node holds ``target`` (a target name of the dataset), ``head``,
``loss`` and ``metric`` (each built through ``_target_``), and the task's own sizes and output settings
(:data:`TASK_SETTINGS`). The head YAMLs read those settings by interpolation (``num_classes: ${..num_outputs}``),
so any head can be swapped in with ``heads@task.<name>.head=<option>`` and keeps the task's size. A node with a
``type`` (``binary``, ``multiclass``, ...) gets the head, loss and metric it lacks from that type
(:mod:`mtl_train.task_types`).

:func:`check_tasks_fit` stops with one message when a task's targets do not fit its type, or when, run once on two
training rows, its head, loss or metric does not fit its targets (e.g. ``loss@task.rhythm.loss=mse`` on class
indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mtl_train.data.base import MultiTaskData
from mtl_train.errors import ConfigError, UserError
from mtl_train.labels import check_missing_label, labelled_mask, masked_mean_loss
from mtl_train.losses.binary_cross_entropy import BinaryCrossEntropy
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.losses.focal import FocalLoss
from mtl_train.metrics.base import TaskMetric
from mtl_train.metrics.binary import LabelScoreHistograms
from mtl_train.model import MultiTaskModel
from mtl_train.task_types import fill_task_types, shape_text, type_problem, zero_one_mismatch
from mtl_train.utils.instantiate import instantiate

TASK_COMPONENTS = ("head", "loss", "metric")
"""The ``_target_`` nodes of a task."""

TASK_SETTINGS: dict[str, Any] = {
    "target": str,            # the dataset target the task predicts
    "type": str,              # what the task predicts (mtl_train.task_types): the head, loss and metric it lacks
    "head": dict,             # the head, loss and metric nodes (TASK_COMPONENTS)
    "loss": dict,
    "metric": dict,
    "num_outputs": int,       # output channels: classes (classification, dense), channels (reconstruction), values
    "upsample_stages": int,   # dense and reconstruction heads: x2 upsampling rounds (~log2 of the trunk's pooling)
    "activation": str,        # reconstruction head: none | sigmoid (targets in [0, 1])
    "offset": float,          # regression head: predictions are offset + scale * output, in the target's units
    "scale": float,
    "missing_label": float,   # the target value that marks "no label" for a sample (e.g. -1 for classes, .nan)
}
"""Every key a task node may hold, with its type. Head settings a chosen head does not have are left unused."""

CLASS_INDEX_LOSSES: tuple[type[nn.Module], ...] = (CrossEntropy, FocalLoss, nn.CrossEntropyLoss, nn.NLLLoss)
"""Losses of logits ``(N, C, *S)`` against integer class indices ``(N, *S)`` (config options below)."""
VALUE_LOSSES: tuple[type[nn.Module], ...] = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)
"""Losses of predictions against float targets of the same shape (config options below)."""
ZERO_ONE_LOSSES: tuple[type[nn.Module], ...] = (BinaryCrossEntropy, nn.BCEWithLogitsLoss)
"""Losses of logits against 0/1 labels of the same shape: ``(N,)`` binary, ``(N, L)`` multi-label."""
CLASS_INDEX_LOSS_OPTIONS = ("cross_entropy", "focal")
VALUE_LOSS_OPTIONS = ("mse", "l1", "huber")
EVALUATED_SPLITS = ("val", "test")


@dataclass
class Task:
    """One task: the dataset target it predicts, its loss function and its metric accumulator; ``task_type`` is the
    type its node declared (``type:``), if any (:mod:`mtl_train.task_types`)."""

    name: str
    target: str
    loss: nn.Module
    metric: TaskMetric
    missing_label: float | None = None
    task_type: str | None = None

    def __post_init__(self) -> None:
        if self.missing_label is not None:
            check_missing_label(self.name, self.loss, self.missing_label)

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The task's loss on one batch: over its labelled elements only when ``missing_label`` is set (0, with a
        zero gradient, for a batch without labels: :mod:`mtl_train.labels`)."""
        if self.missing_label is None:
            return self.loss(output, target)
        return masked_mean_loss(self.loss, output, target, labelled_mask(target, self.missing_label))

    def update_metric(self, output: Tensor, target: Tensor) -> None:
        """Add one batch (its labelled elements, when ``missing_label`` is set) to the task's metric."""
        if self.missing_label is None:
            self.metric.update(output, target)
        else:
            self.metric.update_labelled(output, target, labelled_mask(target, self.missing_label))


def build_tasks(task_cfg: DictConfig, target_names: list[str]) -> list[Task]:
    """One :class:`Task` per key of ``task_cfg``; every target must be one the dataset provides. Typed task nodes are
    filled in place first (:func:`~mtl_train.task_types.fill_task_types`), so their heads are built from the same
    nodes."""
    if len(task_cfg) == 0:
        raise ConfigError("task must define at least one task (e.g. task=ecg_cls_rec)")
    fill_task_types(task_cfg)
    tasks = []
    for name, node in task_cfg.items():
        if node.target not in target_names:
            raise ConfigError(
                f"task.{name}.target={node.target!r} is not provided by this dataset (it provides {target_names}); "
                f"pick a task set that matches the dataset, e.g. task=cls_seg for the MNIST family "
                f"or task=ecg_cls_rec for the synthetic ECG"
            )
        tasks.append(
            Task(
                name=str(name),
                target=node.target,
                loss=instantiate(node.loss, f"task.{name}.loss"),
                metric=instantiate(node.metric, f"task.{name}.metric"),
                missing_label=node.get("missing_label"),
                task_type=node.get("type"),
            )
        )
    return tasks


def check_tasks_fit(model: MultiTaskModel, tasks: list[Task], data: MultiTaskData) -> None:
    """Raise :class:`ConfigError` for the first task whose targets do not fit its type, loss or metric
    (:func:`target_problem`), or whose head, loss or metric does not fit its targets.

    The model runs once on two training rows, in eval mode and without gradients (so no parameter, buffer or
    random state changes), and each task's output meets its targets as in training (:func:`fit_problem`).
    """
    for task in tasks:
        splits = {name: getattr(data, name).targets[task.target] for name in ("train", "val", "test")}
        problem = target_problem(task, splits) or label_problem(task, splits)
        if problem is not None:
            raise ConfigError(problem)
    rows = data.train.head(2)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(rows.inputs.to(device))
    finally:
        model.train(was_training)
    for task in tasks:
        targets = [split.targets[task.target] for split in (data.train, data.val, data.test)]
        largest = None if targets[0].is_floating_point() else max(int(t.max()) for t in targets if t.numel() > 0)
        head = type(model.heads[task.name]).__name__
        problem = fit_problem(task, head, outputs[task.name].float(), rows.targets[task.target].to(device), largest)
        if problem is not None:
            raise ConfigError(problem)


def fit_problem(task: Task, head: str, output: Tensor, target: Tensor, largest_class: int | None) -> str | None:
    """Why ``task`` cannot train on ``output`` (of the head class ``head``) against ``target``, or None when it can.

    A loss of :data:`ZERO_ONE_LOSSES` takes 0/1 labels (integer or float): the output must be logits of their
    shape. Otherwise integer targets are class indices ``(N, *S)``: the output must be logits ``(N, C, *S)`` with
    ``C`` above ``largest_class`` (the largest index in the data), and the loss one of :data:`CLASS_INDEX_LOSSES`.
    Float targets need an output of their shape and a loss that is not a class-index loss. Then the loss must give
    a scalar on this batch, and the metric must accept it.
    """
    name, loss = task.name, type(task.loss).__name__
    zero_one = isinstance(task.loss, ZERO_ONE_LOSSES)
    words, needed, head_option = zero_one_needs(name, target) if zero_one else target_needs(target)
    described = f"outputs {shape_text(output.shape)}, targets are {words}"
    if zero_one:
        if output.dim() == target.dim() == 2 and output.shape[1] != target.shape[1]:
            return (f"task.{name}.num_outputs: head {head} outputs {output.shape[1]} logits per sample, but the "
                    f"targets of task {name} hold {target.shape[1]} labels; set task.{name}.num_outputs="
                    f"{target.shape[1]}")
        if output.shape != target.shape:
            return (f"task.{name}.head={head} does not fit task {name}: it {described}, which need {needed}; "
                    f"use heads@task.{name}.head={head_option}")
    elif not target.is_floating_point():
        if output.dim() != target.dim() + 1 or output.shape[2:] != target.shape[1:]:
            return (f"task.{name}.head={head} does not fit task {name}: it {described}, which need {needed}; "
                    f"use heads@task.{name}.head={head_option}")
        if isinstance(task.loss, VALUE_LOSSES):
            return (f"task.{name}.loss={loss} does not fit task {name}: head {head} {described}; "
                    f"use loss@task.{name}.loss={' or '.join(CLASS_INDEX_LOSS_OPTIONS)}")
        if largest_class is not None and output.shape[1] <= largest_class:
            return (f"task.{name}.num_outputs: head {head} outputs {output.shape[1]} classes, but the targets of task "
                    f"{name} hold class indices up to {largest_class}; set task.{name}.num_outputs={largest_class + 1}")
    else:
        if target.dim() == 2 and output.dim() in (1, 2) and output.shape != target.shape:
            return (f"task.{name}.num_outputs: head {head} outputs {shape_text(output.shape)}, but the targets of task "
                    f"{name} are values {shape_text(target.shape)}; set task.{name}.num_outputs={target.shape[1]}")
        if output.shape != target.shape:
            return (f"task.{name}.head={head} does not fit task {name}: it {described}, which need {needed}; "
                    f"use heads@task.{name}.head={head_option}")
        if isinstance(task.loss, CLASS_INDEX_LOSSES):
            return (f"task.{name}.loss={loss} does not fit task {name}: head {head} {described}; "
                    f"use loss@task.{name}.loss={', '.join(VALUE_LOSS_OPTIONS[:-1])} or {VALUE_LOSS_OPTIONS[-1]}")
    return run_problem(task, head, output, target, described)


def run_problem(task: Task, head: str, output: Tensor, target: Tensor, described: str) -> str | None:
    """Why ``task``'s loss or metric fails on this batch (or gives no scalar loss), or None when both work."""
    name, loss = task.name, type(task.loss).__name__
    try:
        value = task.compute_loss(output, target)
    except UserError:
        raise
    except Exception as error:  # whatever a loss raises on inputs it does not accept
        return f"task.{name}.loss={loss} does not fit task {name}: head {head} {described} ({error})"
    if not isinstance(value, Tensor) or value.dim() != 0:
        return (f"task.{name}.loss={loss} must return one number (a scalar tensor), got "
                f"{getattr(value, 'shape', value)}; use a loss that averages (reduction mean)")
    try:
        task.update_metric(output, target)
    except UserError:
        raise
    except Exception as error:  # whatever a metric raises on inputs it does not accept
        return (f"task.{name}.metric={type(task.metric).__name__} does not fit task {name}: head {head} {described} "
                f"({error})")
    finally:
        task.metric.reset()
    return None


def target_problem(task: Task, targets: dict[str, Tensor]) -> str | None:
    """Why the targets of ``task`` (by split) do not fit its type (:func:`~mtl_train.task_types.type_problem`), or,
    for a task without a type, its 0/1 loss or metric (values other than 0 and 1); None when they fit."""
    if task.task_type is not None:
        return type_problem(task.name, task.task_type, task.target, targets, task.missing_label)
    if isinstance(task.loss, ZERO_ONE_LOSSES):
        component, name, fix = "loss", type(task.loss).__name__, f"use loss@task.{task.name}.loss=cross_entropy"
    elif isinstance(task.metric, LabelScoreHistograms):
        component, name, fix = "metric", type(task.metric).__name__, "use a classification metric"
    else:
        return None
    found = zero_one_mismatch(targets, task.missing_label)
    if found is None:
        return None
    return (f"task.{task.name}.{component}={name} needs 0/1 labels, but target {task.target!r} {found}; for class "
            f"indices {fix}")


def label_problem(task: Task, targets: dict[str, Tensor]) -> str | None:
    """Why the AUROC of a binary or multi-label metric (:mod:`mtl_train.metrics.binary`) would be undefined on an
    evaluated split (val, test) of ``targets``: a binary target without positives or without negatives there, or a
    multi-label target none of whose labels has both. None when it is defined."""
    if not isinstance(task.metric, LabelScoreHistograms):
        return None
    for split in EVALUATED_SPLITS:
        target = targets[split]
        if target.numel() == 0:
            continue
        labelled = labelled_mask(target, task.missing_label)
        positives = ((target == 1) & labelled).reshape(len(target), -1).any(dim=0)
        negatives = ((target == 0) & labelled).reshape(len(target), -1).any(dim=0)
        if not bool((positives & negatives).any()):
            if not bool(positives.any()):
                lacking = "no positive (1) label"
            elif not bool(negatives.any()):
                lacking = "no negative (0) label"
            else:
                lacking = "no label column with both a positive and a negative"
            return (f"task {task.name} (target {task.target!r}): the {split} split holds {lacking}, so AUROC is "
                    f"undefined there; give every split positives and negatives (more rows, or a stratified "
                    f"dataset.split)")
    return None


def zero_one_needs(name: str, target: Tensor) -> tuple[str, str, str]:
    """As :func:`target_needs`, for the 0/1 labels of task ``name`` under a loss of :data:`ZERO_ONE_LOSSES`."""
    shape = shape_text(target.shape)
    labels = f" with task.{name}.num_outputs={target.shape[1]}" if target.dim() == 2 else ""
    return f"0/1 labels {shape}", f"logits {shape}", f"binary{labels}"


def target_needs(target: Tensor) -> tuple[str, str, str]:
    """``target`` in words, the output it needs, and the head option (``configs/heads/``) that gives that output."""
    shape = shape_text(target.shape)
    if not target.is_floating_point():
        if target.dim() == 1:
            return f"class indices {shape}", "logits (N, C)", "classification"
        return f"class indices {shape}", f"logits (N, C, {', '.join(str(size) for size in target.shape[1:])})", "dense"
    return f"values {shape}", f"predictions {shape}", "regression" if target.dim() <= 2 else "reconstruction"
