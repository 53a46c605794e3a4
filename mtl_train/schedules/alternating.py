"""Alternating training: one task at a time, cycling per step or per epoch.

The classic alternative to joint optimisation of a shared network (e.g. Dong et al., ACL 2015, who alternate
tasks between mini-batches). ``order`` lists the tasks of the cycle (all tasks, in config order, when null).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.schedules.base import TrainingSchedule


class AlternatingSchedule(TrainingSchedule):
    """Task ``order[i mod len(order)]`` trains alone in step (``unit=step``) or epoch (``unit=epoch``) i."""

    def __init__(self, task_names: Sequence[str], unit: str = "step", order: Sequence[str] | None = None) -> None:
        super().__init__(task_names)
        if unit not in ("step", "epoch"):
            raise ConfigError(f"schedule.unit must be 'step' or 'epoch', got {unit!r}")
        self.unit = unit
        names = list(order) if order is not None else self.task_names
        if not names:
            raise ConfigError("schedule.order must list at least one task")
        self.order = [self.task_index(name, "schedule.order") for name in names]

    def factors(self, step: int, epoch: float) -> Tensor:
        position = step if self.unit == "step" else int(epoch)
        return self.one_hot([self.order[position % len(self.order)]])
