"""Task types: ``type:`` in a task node says what the task predicts, and its head, loss and metric follow from it.

A task node that gives a ``type`` needs no head, loss or metric node::

    task:
      churn: {target: churned, type: binary}
      tags: {target: tags, type: multilabel, num_outputs: 5}

:data:`TASK_TYPES` is the one table: for each type, the target it fits, the head and loss (options of
``configs/heads`` and ``configs/loss``, read from those YAML files) and the metric node. :func:`fill_task_type`
fills a typed node in place:

* a component the node lacks (or sets to null) is the type's;
* a component the node gives with a ``_target_`` is kept: the explicit one wins (``+loss@task.t.loss=focal``);
* a component the node gives without a ``_target_`` holds settings of the type's own (``loss: {pos_weight: 3.0}``,
  ``metric: {data_range: 2.0}``), merged on top of it;
* task settings the type needs (:attr:`TaskType.required`) must be in the node; those it defaults
  (:attr:`TaskType.defaults`) are added when missing.

The head and metric nodes read the task's settings by interpolation (``${..num_outputs}``), as in the task sets.
:func:`type_problem` tells why a target does not fit a type, for ``check_tasks_fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.labels import labelled_mask
from mtl_train.metrics.binary import BinaryMetrics, MultiLabelMetrics
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.metrics.reconstruction import ReconstructionMetrics
from mtl_train.metrics.regression import RegressionMetrics
from mtl_train.metrics.segmentation import SegmentationMetrics

CLASSES, ZERO_ONE, VALUES = "class indices", "0/1 labels", "values"
"""What a target's elements hold: integer class indices, 0/1 labels (integer or float), or float values."""


def target_of(cls: type) -> str:
    """The ``_target_`` naming ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class TaskType:
    """What a task type fits and what it builds.

    ``labels`` (:data:`CLASSES`, :data:`ZERO_ONE` or :data:`VALUES`) and the target ranks ``min_rank`` to
    ``max_rank`` (None: no upper bound; ``(N,)`` has rank 1) are what a fitting target holds, ``shape`` says it in
    words. ``head`` and ``loss`` are options of ``configs/heads`` and ``configs/loss``; ``metric`` is the metric
    node, and ``head_settings`` are set in the head node over the YAML's. ``required`` maps the task settings a node
    must give to what they mean; ``defaults`` gives the settings filled in when a node lacks them."""

    labels: str
    shape: str
    min_rank: int
    max_rank: int | None
    head: str
    loss: str
    metric: dict[str, Any]
    head_settings: dict[str, Any] = field(default_factory=dict)
    required: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def target_text(self) -> str:
        """The target it fits, in words: ``class indices (N,)``."""
        return f"{self.labels} {self.shape}"


TASK_TYPES: dict[str, TaskType] = {
    "multiclass": TaskType(
        CLASSES, "(N,)", 1, 1, head="classification", loss="cross_entropy",
        metric={"_target_": target_of(ClassificationMetrics), "num_classes": "${..num_outputs}"},
        required={"num_outputs": "the number of classes"}),
    "binary": TaskType(
        ZERO_ONE, "(N,)", 1, 1, head="binary", loss="bce",
        metric={"_target_": target_of(BinaryMetrics)},
        head_settings={"num_labels": None}),  # one logit per sample, whatever num_outputs says
    "multilabel": TaskType(
        ZERO_ONE, "(N, L)", 2, 2, head="binary", loss="bce",
        metric={"_target_": target_of(MultiLabelMetrics), "num_labels": "${..num_outputs}"},
        required={"num_outputs": "the number of labels L"}),
    "regression": TaskType(
        VALUES, "(N,) or (N, D)", 1, 2, head="regression", loss="mse",
        metric={"_target_": target_of(RegressionMetrics)},
        defaults={"num_outputs": 1}),
    "segmentation": TaskType(
        CLASSES, "(N, *S)", 2, None, head="dense", loss="cross_entropy",
        metric={"_target_": target_of(SegmentationMetrics), "num_classes": "${..num_outputs}"},
        required={"num_outputs": "the number of classes per element"}),
    "dense_regression": TaskType(
        VALUES, "(N, C, *S)", 3, None, head="reconstruction", loss="mse",
        metric={"_target_": target_of(RegressionMetrics)},
        required={"num_outputs": "the channels C of the target"}),
    "reconstruction": TaskType(
        VALUES, "(N, C, *S)", 3, None, head="reconstruction", loss="mse",
        metric={"_target_": target_of(ReconstructionMetrics)},
        required={"num_outputs": "the channels C of the target"}),
}
"""Every task type. ``regression`` and ``dense_regression`` differ from ``reconstruction`` only in the metric:
MAE and RMSE in the target's units, where a reconstruction (an image or signal like the input) is scored by MSE
and PSNR (``metric: {data_range: ...}``, default 1.0). ``binary`` and ``multilabel`` share the head
(``configs/heads/binary.yaml``: ``(N,)`` without ``num_outputs``, ``(N, L)`` with it)."""

COMPONENT_GROUPS = {"head": "heads", "loss": "loss"}
"""The config group of each component a type reads from a YAML file; the metric is the type's own node."""


def config_tree() -> Path:
    """The package's config folder, as :func:`mtl_train.cli.config_dir` finds it: ``mtl_train/configs`` inside a
    built wheel, else the checkout's ``configs/``."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def task_type(name: str, node: DictConfig) -> TaskType:
    """The type ``task.<name>.type`` names; one :class:`ConfigError` line listing the types for any other value."""
    value = node.type
    if not isinstance(value, str) or value not in TASK_TYPES:
        raise ConfigError(f"task.{name}.type={value!r} is not a task type; valid types: {', '.join(TASK_TYPES)}")
    return TASK_TYPES[value]


def component_node(kind: TaskType, component: str) -> DictConfig:
    """The type's node for ``component`` (``head``, ``loss`` or ``metric``)."""
    if component == "metric":
        return OmegaConf.create(kind.metric)
    option = getattr(kind, component)
    node = OmegaConf.load(config_tree() / COMPONENT_GROUPS[component] / f"{option}.yaml")
    return OmegaConf.merge(node, kind.head_settings) if component == "head" else node


def fill_task_type(name: str, node: DictConfig) -> None:
    """Fill the node of task ``name`` in place from its ``type`` (module docstring); a node without a type is left
    as it is. Filling a filled node changes nothing."""
    if "type" not in node:
        return
    kind = task_type(name, node)
    with open_dict(node):
        for key, value in kind.defaults.items():
            if key not in node:
                node[key] = value
        for key, meaning in kind.required.items():
            if key not in node:
                raise ConfigError(f"task.{name}.type={node.type} needs task.{name}.{key} ({meaning}); add it to the "
                                  f"task node, e.g. {key}: 3")
        for component in ("head", "loss", "metric"):
            given = node.get(component)
            if given is None:
                node[component] = component_node(kind, component)
            elif isinstance(given, DictConfig) and "_target_" not in given:
                node[component] = OmegaConf.merge(component_node(kind, component), given)


def typed_task_node(name: str, node: DictConfig) -> DictConfig:
    """A filled copy of the node of task ``name`` (:func:`fill_task_type`); ``node`` itself is left unchanged. The
    copy keeps ``node``'s parent, so the node's own interpolations of other config values still resolve."""
    if "type" not in node:
        return node
    filled = node.copy()
    fill_task_type(name, filled)
    return filled


def fill_task_types(task_cfg: DictConfig) -> None:
    """Fill every typed task node of ``cfg.task`` in place (:func:`fill_task_type`)."""
    for name in task_cfg:
        node = task_cfg[name]
        if isinstance(node, DictConfig):
            fill_task_type(str(name), node)


def type_problem(name: str, type_name: str, target_name: str, targets: dict[str, Tensor],
                 missing_label: float | None) -> str | None:
    """Why the target ``target_name`` (its ``targets`` by split) does not fit ``task.<name>.type=type_name``, or
    None when it fits. Elements equal to ``missing_label`` are not labels and are not looked at."""
    kind = TASK_TYPES[type_name]
    found = target_mismatch(kind, targets, missing_label)
    if found is None:
        return None
    fitting = [other for other, candidate in TASK_TYPES.items()
               if target_mismatch(candidate, targets, missing_label) is None]
    fix = f"use type {' or '.join(fitting)}" if fitting else f"fix the target or task.{name}.type"
    return f"task.{name}.type={type_name} needs {kind.target_text()}, but target {target_name!r} {found}; {fix}"


def target_mismatch(kind: TaskType, targets: dict[str, Tensor], missing_label: float | None) -> str | None:
    """How the ``targets`` (by split) differ from what ``kind`` fits, in words (``holds floats``), or None."""
    first = next(iter(targets.values()))
    rank = first.dim()
    if rank < kind.min_rank or (kind.max_rank is not None and rank > kind.max_rank):
        return f"has shape {shape_text(first.shape)}"
    if kind.labels == CLASSES and first.is_floating_point():
        return f"holds floats ({first.dtype})"
    if kind.labels == VALUES and not first.is_floating_point():
        return f"holds integers ({first.dtype}); save it as a float array"
    if kind.labels == ZERO_ONE:
        return zero_one_mismatch(targets, missing_label)
    return None


def zero_one_mismatch(targets: dict[str, Tensor], missing_label: float | None) -> str | None:
    """The first labelled value of ``targets`` (by split) that is neither 0 nor 1, in words, or None."""
    for split, target in targets.items():
        labelled = labelled_mask(target, missing_label)
        outside = labelled & (target != 0) & (target != 1)
        if bool(outside.any()):
            return f"holds {target[outside][0].item():g} (in the {split} split)"
    return None


def shape_text(shape: torch.Size) -> str:
    """A batch shape with ``N`` for the batch size: ``(N,)``, ``(N, 4, 2500)``."""
    return "(N,)" if len(shape) == 1 else f"(N, {', '.join(str(size) for size in shape[1:])})"
