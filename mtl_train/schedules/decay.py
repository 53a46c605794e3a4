"""Anneal one task's weight over training (e.g. fade out an auxiliary task, as in auxiliary-task curricula).

The factor of ``task`` goes from ``start`` to ``end`` over ``epochs`` epochs and then stays at ``end``, with a
``linear`` or ``cosine`` shape; every other task keeps factor 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.schedules.base import TrainingSchedule


def anneal(progress: float, start: float, end: float, shape: str) -> float:
    """The value at ``progress`` in [0, 1] between ``start`` and ``end``."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return start + (end - start) * progress


class DecaySchedule(TrainingSchedule):
    """Task ``task`` weighted by ``anneal(epoch / epochs, start, end, shape)``."""

    def __init__(
        self, task_names: Sequence[str], task: str, start: float = 1.0, end: float = 0.0, epochs: float = 5.0,
        shape: str = "linear",
    ) -> None:
        super().__init__(task_names)
        if shape not in ("linear", "cosine"):
            raise ConfigError(f"schedule.shape must be 'linear' or 'cosine', got {shape!r}")
        if not epochs > 0:
            raise ConfigError(f"schedule.epochs must be > 0, got {epochs}")
        if not (start >= 0 and end >= 0):
            raise ConfigError(f"schedule.start and schedule.end must be >= 0, got {start} and {end}")
        self.index = self.task_index(task, "schedule.task")
        self.start, self.end, self.epochs, self.shape = start, end, epochs, shape

    def factors(self, step: int, epoch: float) -> Tensor:
        factors = torch.ones(len(self.task_names))
        factors[self.index] = anneal(epoch / self.epochs, self.start, self.end, self.shape)
        return factors
