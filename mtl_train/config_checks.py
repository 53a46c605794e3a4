"""Checks of a run's composed config before anything is built: every key known, every value of its type.

Hydra rejects an override of a key the config lacks (``trainer.foo=1``), but the ``+`` it suggests then adds the
key (``+trainer.max_epoch=1``), and a value of the wrong type (``weighting.alpha=abc``) would fail deep inside the
code that uses it. :func:`check_config` walks the config once and stops at the first problem with one
:class:`~mtl_train.errors.ConfigError` naming the key, the valid keys or type, and a fix. It checks:

* the top level: the plain keys of ``configs/train.yaml`` (:data:`TOP_LEVEL_KEYS`), the config groups, and a
  user's own groups chosen in this run (:func:`user_groups`);
* ``trainer``: the fields of :class:`~mtl_train.engine.trainer.TrainerSettings` and the keys
  :func:`mtl_train.train.train_model` reads itself (:data:`TRAINER_RUN_KEYS`), typed by their annotations;
* ``scheduler``: ``interval`` and its ``build`` node;
* ``task.<name>``: the task settings of :data:`mtl_train.tasks.TASK_SETTINGS`, a typed task as its type fills it
  (:func:`mtl_train.task_types.typed_task_node`);
* every ``_target_`` node (dataset, backbone, weighting, schedule, optimizer, scheduler.build and each task's
  head, loss and metric) with :func:`mtl_train.utils.instantiate.check_node`, leaving out the arguments
  ``train_model`` passes itself (:data:`INJECTED`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtl_train.engine.trainer import TrainerSettings
from mtl_train.errors import ConfigError
from mtl_train.task_types import TASK_TYPES, typed_task_node
from mtl_train.tasks import TASK_COMPONENTS, TASK_SETTINGS
from mtl_train.utils.config_values import check_keys, check_types
from mtl_train.utils.instantiate import check_node

TOP_LEVEL_KEYS: dict[str, Any] = {"seed": int, "stl": bool, "baselines": str | None, "output_dir": str}
"""The plain top-level keys of ``configs/train.yaml`` and their types."""

CONFIG_GROUPS = ("dataset", "backbone", "task", "weighting", "schedule", "optimizer", "scheduler", "trainer",
                 "diagnostics")
"""The config groups that own a top-level key (``hydra``, ``experiment`` and ``debug`` write into the others)."""

COMPONENT_NODES = ("dataset", "backbone", "weighting", "schedule", "optimizer")
"""Top-level nodes built from their ``_target_``."""

TRAINER_RUN_KEYS: dict[str, Any] = {
    "device": str,
    "amp": str,
    "channels_last": bool,
    "resume": bool | str | None,
    "overwrite": bool,
    "plots": bool,
    "tensorboard": bool,
}
"""Keys of ``trainer`` that :mod:`mtl_train.train` reads itself (not :class:`TrainerSettings` fields)."""

SCHEDULER_KEYS: dict[str, Any] = {"interval": str, "build": dict}
"""Keys of a ``scheduler`` option: when it steps, and the ``_target_`` node building it."""

INJECTED: dict[str, tuple[str, ...]] = {
    "backbone": ("task_names", "in_channels", "input_size"),
    "head": ("in_channels", "spatial_dims"),
    "weighting": ("task_names",),
    "schedule": ("task_names",),
    "optimizer": ("params",),
    "scheduler.build": ("optimizer",),
}
"""Arguments :func:`mtl_train.train.train_model` passes when it builds a node, by node: not config keys."""


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` at the first unknown key or mistyped value of a run's config ``cfg``."""
    check_keys("", cfg.keys(), [*TOP_LEVEL_KEYS, *CONFIG_GROUPS, *user_groups()], "top-level setting")
    check_types("", cfg, TOP_LEVEL_KEYS)
    check_trainer(cfg.trainer)
    for key in COMPONENT_NODES:
        check_node(cfg[key], key, INJECTED.get(key, ()))
    check_keys("scheduler", cfg.scheduler.keys(), SCHEDULER_KEYS, "scheduler setting")
    check_types("scheduler", cfg.scheduler, SCHEDULER_KEYS)
    check_node(cfg.scheduler.build, "scheduler.build", INJECTED["scheduler.build"])
    for name, node in cfg.task.items():
        check_task(str(name), node)


def user_groups() -> set[str]:
    """The config groups chosen in the running Hydra app that the package's config tree lacks: a user's own, from
    ``--config-dir`` or ``hydra.searchpath`` (e.g. ``+paths=local`` holding values their other configs interpolate),
    each owning the top-level key of its name. Empty outside a Hydra app."""
    if not HydraConfig.initialized():
        return set()
    runtime = HydraConfig.get().runtime
    package_dirs = [Path(source.path) for source in runtime.config_sources
                    if source.provider == "main" and source.schema == "file"]
    chosen = {str(name).split("@")[0].split("/")[0] for name in runtime.choices}
    return {group for group in chosen if not any((folder / group).is_dir() for folder in package_dirs)}


def trainer_types() -> dict[str, Any]:
    """Every valid ``trainer`` key with its type: :class:`TrainerSettings`' fields, then :data:`TRAINER_RUN_KEYS`."""
    hints = typing.get_type_hints(TrainerSettings)
    return {**{field.name: hints[field.name] for field in dataclasses.fields(TrainerSettings)}, **TRAINER_RUN_KEYS}


def check_trainer(node: DictConfig) -> None:
    """Every key of ``trainer`` is a trainer setting, of its type."""
    valid = trainer_types()
    check_keys("trainer", node.keys(), valid, "trainer setting")
    check_types("trainer", node, valid)


def check_task(name: str, node: Any) -> None:
    """``task.<name>``: known task settings of their types, and its head, loss and metric nodes."""
    path = f"task.{name}"
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must be a mapping with a target, head, loss and metric, got {node!r}")
    check_keys(path, node.keys(), TASK_SETTINGS, "task setting")
    node = typed_task_node(name, node)
    missing = [key for key in ("target", *TASK_COMPONENTS) if key not in node]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: every task needs a target, and a type "
                          f"({', '.join(TASK_TYPES)}) or a head, a loss and a metric (see configs/task/*.yaml)")
    check_types(path, node, {key: hint for key, hint in TASK_SETTINGS.items() if key not in TASK_COMPONENTS})
    for component in TASK_COMPONENTS:
        check_node(node[component], f"{path}.{component}", INJECTED.get(component, ()))
