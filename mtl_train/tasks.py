"""Tasks: which target a task predicts, its loss and its metrics, built from ``cfg.task``.

Each key of ``cfg.task`` is a task name; its node holds ``target`` (a target name of the dataset),
``head``, ``loss`` and ``metric`` (each built through ``_target_``).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from mtl_train.errors import ConfigError
from mtl_train.metrics.base import TaskMetric
from mtl_train.utils.instantiate import instantiate


@dataclass
class Task:
    """One task: the dataset target it predicts, its loss function and its metric accumulator."""

    name: str
    target: str
    loss: nn.Module
    metric: TaskMetric


def build_tasks(task_cfg: DictConfig, target_names: list[str]) -> list[Task]:
    """One :class:`Task` per key of ``task_cfg``; every target must be one the dataset provides."""
    if len(task_cfg) == 0:
        raise ConfigError("task must define at least one task (e.g. task=ecg_cls_rec)")
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
            )
        )
    return tasks
