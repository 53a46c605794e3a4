"""Missing labels: a task's ``missing_label`` value (e.g. ``-1`` for class indices, ``nan`` for regression values)
marks the target elements a sample has no label for.

Real multi-task data is partly annotated: a sample may carry a label for one task and none for another. With
``task.<t>.missing_label`` set, task t's loss is the mean of the element losses over its labelled elements only,

    L_t = sum_i m_i w_i l_i / sum_i m_i w_i   (0 when no element is labelled),

with m_i = 1 for a labelled element and 0 otherwise, l_i the loss of element i, and w_i = 1 unless the loss's mean
is a weighted mean (:meth:`~mtl_train.losses.cross_entropy.CrossEntropy.mean_weights`). A batch with no label for
t gives L_t = 0 exactly, with a zero gradient: every weighting method treats a task whose loss is 0 as inactive in
that step (no weight, no state moved). The task's metric sees the labelled elements only
(:meth:`~mtl_train.metrics.base.TaskMetric.update_labelled`).

Computed without reading values on the host (no boolean indexing), so a step does not stall an accelerator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError

if TYPE_CHECKING:
    from mtl_train.data.base import MultiTaskData
    from mtl_train.tasks import Task


def is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def labelled_mask(target: Tensor, missing_label: float | None) -> Tensor:
    """A bool tensor of ``target``'s shape: True where the element holds a label (is not ``missing_label``; every
    element when ``missing_label`` is None)."""
    if missing_label is None:
        return torch.ones_like(target, dtype=torch.bool)
    if is_nan(missing_label):
        return ~torch.isnan(target)
    return target != missing_label


def check_missing_label(task: str, loss: nn.Module, missing_label: float) -> None:
    """Raise :class:`ConfigError` when ``loss`` cannot give one value per element (it has no ``reduction``), which
    the masked mean needs."""
    if not hasattr(loss, "reduction"):
        raise ConfigError(
            f"task.{task}.missing_label={missing_label} needs a loss that gives one value per element (a "
            f"`reduction` attribute, as torch.nn losses have); task.{task}.loss={type(loss).__name__} has none: "
            f"give it a reduction argument ('mean' | 'none') or leave missing_label unset")


def element_losses(loss: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    """``loss`` with ``reduction='none'``: one value per target element."""
    reduction = loss.reduction
    loss.reduction = "none"
    try:
        return loss(output, target)
    finally:
        loss.reduction = reduction


def masked_mean_loss(loss: nn.Module, output: Tensor, target: Tensor, labelled: Tensor) -> Tensor:
    """The mean of ``loss`` over the labelled elements of ``target`` (see the module docstring); 0, with a zero
    gradient, when none is labelled. Unlabelled elements are given a valid placeholder target (0) before the loss,
    so their (discarded) values stay finite and add exactly 0 to the gradient."""
    filled = torch.where(labelled, target, torch.zeros((), dtype=target.dtype, device=target.device))
    values = element_losses(loss, output, filled)  # a weighted loss's values already carry their weights w_i
    mask = labelled.to(values.dtype)
    weights = mask
    element_weights = loss.mean_weights(filled) if hasattr(loss, "mean_weights") else None
    if element_weights is not None:
        weights = mask * element_weights.to(values.dtype)
    denominator = weights.sum()
    return (values * mask).sum() / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def check_labels(tasks: list[Task], data: MultiTaskData) -> None:
    """Raise :class:`ConfigError` for the first task whose labels cannot be used: NaN targets without
    ``missing_label: .nan``, a NaN missing label for class indices, a negative class index that is not the task's
    missing label, or a split (train, val or test) holding no label at all for the task."""
    for task in tasks:
        where = f"task {task.name} (target {task.target!r})"
        for split_name in ("train", "val", "test"):
            target = getattr(data, split_name).targets[task.target]
            if target.numel() == 0:
                continue
            if target.is_floating_point() and task.missing_label is None and bool(torch.isnan(target).any()):
                raise ConfigError(
                    f"{where}: the {split_name} targets hold NaN; if NaN marks a missing label, set "
                    f"task.{task.name}.missing_label=nan (in YAML: .nan), else fix the data")
            if task.missing_label is not None and is_nan(task.missing_label) and not target.is_floating_point():
                raise ConfigError(
                    f"task.{task.name}.missing_label=nan, but target {task.target!r} holds integer class indices; "
                    f"mark missing class labels with an integer such as -1 (task.{task.name}.missing_label=-1)")
            labelled = labelled_mask(target, task.missing_label)
            if not target.is_floating_point():
                negative = (target < 0) & labelled
                if bool(negative.any()):
                    row = int(negative.reshape(len(target), -1).any(dim=1).nonzero()[0])
                    value = int(target[row].min())
                    fix = (f"task.{task.name}.missing_label={task.missing_label} marks missing labels"
                           if task.missing_label is not None else
                           f"if {value} marks a missing label, set task.{task.name}.missing_label={value}")
                    raise ConfigError(
                        f"{where}: {split_name} row {row} holds the class index {value}, outside [0, num_outputs); "
                        f"{fix}")
            if not bool(labelled.any()):
                raise ConfigError(
                    f"{where} has no label in the {split_name} split (every value is the missing label "
                    f"{task.missing_label}): it can neither train nor be measured there; remove the task from the "
                    f"task set or fix task.{task.name}.missing_label")
