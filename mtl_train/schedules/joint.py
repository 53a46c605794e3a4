"""Joint training: every task in every step (factors all 1). The default."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_train.schedules.base import TrainingSchedule


class JointSchedule(TrainingSchedule):
    """All tasks, always."""

    def factors(self, step: int, epoch: float) -> Tensor:
        return torch.ones(len(self.task_names))
