"""A tiny :class:`Trainer` built in code, without Hydra, for tests that drive ``train_step`` or ``fit`` directly.

Two 3-class tasks, ``a`` and ``b``, on random 6-feature vectors; a one-layer shared trunk (Linear + Tanh) and one
small MLP head per task, with no BatchNorm and no dropout, so a step is a deterministic function of the parameters
and the batch (and half batches on two processes add up to the whole batch exactly); plain SGD.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.engine.distributed import Distributed
from mtl_train.engine.outputs import NullRunWriter
from mtl_train.engine.trainer import Trainer, TrainerSettings
from mtl_train.heads.classification import ClassificationHead
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.model import MultiTaskModel
from mtl_train.schedules.base import TrainingSchedule
from mtl_train.schedules.joint import JointSchedule
from mtl_train.tasks import Task
from mtl_train.weighting.base import Weighting

TASKS = ["a", "b"]
NUM_FEATURES = 6
NUM_CLASSES = 3
HIDDEN = 5
BATCH_SIZE = 8


def tiny_split(rows: int, generator: torch.Generator) -> TensorSplit:
    inputs = torch.randn(rows, NUM_FEATURES, generator=generator)
    return TensorSplit(inputs, {t: torch.randint(0, NUM_CLASSES, (rows,), generator=generator) for t in TASKS})


def tiny_data(num_train: int = 16, seed: int = 0) -> MultiTaskData:
    """``num_train`` training rows, 8 validation and 8 test rows; target ``t`` is task ``t``'s label."""
    generator = torch.Generator().manual_seed(seed)
    return MultiTaskData(tiny_split(num_train, generator), tiny_split(8, generator), tiny_split(8, generator))


def tiny_model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    trunk = HardSharedBackbone([nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN), nn.Tanh())], TASKS, split_depth=1,
                               out_channels=HIDDEN, spatial_dims=0)
    heads = {t: ClassificationHead(HIDDEN, 0, num_classes=NUM_CLASSES, hidden=4) for t in TASKS}
    return MultiTaskModel(trunk, heads)


def tiny_trainer(weighting: Weighting, output_dir: Path, schedule: TrainingSchedule | None = None,
                 distributed: Distributed = Distributed(), max_steps: int | None = None, lr: float = 0.1,
                 data: MultiTaskData | None = None, device: str = "cpu", amp_dtype: torch.dtype | None = None,
                 optimizer: str = "sgd", **settings: object) -> Trainer:
    """A Trainer of :func:`tiny_model` on ``data`` (default :func:`tiny_data`; batch 8) with SGD and a constant
    learning rate (``optimizer="adam"``: Adam, the rate halved every step), on the CPU in fp32 unless ``device`` and
    ``amp_dtype`` say otherwise; it writes nothing and keeps no checkpoint. ``settings`` are further
    :class:`TrainerSettings` values (e.g. ``data_on_device=False``)."""
    model = tiny_model().to(device)
    weighting = weighting.to(device)
    tasks = [Task(t, t, CrossEntropy(), ClassificationMetrics(NUM_CLASSES)) for t in TASKS]
    groups = [{"params": list(model.parameters())}, *weighting.optimizer_groups()]
    if optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    else:
        optimizer = torch.optim.SGD(groups, lr=lr)
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    settings = TrainerSettings(**{"batch_size": BATCH_SIZE, "max_epochs": 100, "max_steps": max_steps,
                                  "progress": "none", "checkpoint": False, **settings})
    return Trainer(model, tasks, weighting, schedule or JointSchedule(TASKS), optimizer, scheduler, "step",
                   data or tiny_data(), torch.device(device), amp_dtype, settings, NullRunWriter(output_dir, TASKS), {},
                   seed=0, distributed=distributed)


def first_batch(trainer: Trainer) -> tuple[Tensor, dict[str, Tensor]]:
    """The first ``BATCH_SIZE`` training rows (inputs and targets) of ``trainer``'s data."""
    split = trainer.splits["train"]
    return split.inputs[:BATCH_SIZE], {name: target[:BATCH_SIZE] for name, target in split.targets.items()}


def task_loss(model: MultiTaskModel, inputs: Tensor, targets: dict[str, Tensor], task: str) -> Tensor:
    """Task ``task``'s mean cross-entropy on the batch, with the model's current parameters."""
    return nn.functional.cross_entropy(model(inputs)[task], targets[task])
