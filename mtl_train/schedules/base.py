"""The interface of training schedules (see :mod:`mtl_train.schedules`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError


class TrainingSchedule(ABC):
    """Per-task loss factors as a function of the training step and the (fractional) epoch."""

    def __init__(self, task_names: Sequence[str]) -> None:
        self.task_names = list(task_names)

    @abstractmethod
    def factors(self, step: int, epoch: float) -> Tensor:
        """``(k,)`` float factors for the step about to run; ``step`` counts from 0, ``epoch`` = step / steps per epoch."""

    def task_index(self, name: str, key: str) -> int:
        """The position of task ``name``; a :class:`ConfigError` naming ``key`` if it is not a task."""
        if name not in self.task_names:
            raise ConfigError(f"{key} names {name!r}, which is not a task; the tasks are {self.task_names}")
        return self.task_names.index(name)

    def one_hot(self, indices: Sequence[int]) -> Tensor:
        factors = torch.zeros(len(self.task_names))
        factors[list(indices)] = 1.0
        return factors
