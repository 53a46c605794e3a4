"""Pre-train chosen tasks first, then train all tasks jointly (curriculum-style staged training)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.schedules.base import TrainingSchedule


class PretrainThenJointSchedule(TrainingSchedule):
    """Only ``tasks`` train during the first ``epochs`` epochs; every task afterwards."""

    def __init__(self, task_names: Sequence[str], tasks: Sequence[str], epochs: float = 1.0) -> None:
        super().__init__(task_names)
        if not tasks:
            raise ConfigError("schedule.tasks must list the tasks to pre-train, e.g. 'schedule.tasks=[rhythm]'")
        if not epochs >= 0:
            raise ConfigError(f"schedule.epochs must be >= 0, got {epochs}")
        self.pretrain = [self.task_index(name, "schedule.tasks") for name in tasks]
        self.epochs = epochs

    def factors(self, step: int, epoch: float) -> Tensor:
        return self.one_hot(self.pretrain) if epoch < self.epochs else torch.ones(len(self.task_names))
