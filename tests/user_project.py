"""A small user project, written into a folder by :func:`write_user_project`: its own Python package (``my_mtl``) and
its own ``configs/``, installed nowhere. ``mtl-train --config-dir configs`` run from that folder, with the folder on
``PYTHONPATH``, trains it (tests/test_user_code.py); docs/your_own_code.md walks through the same files.

The data: 8-dimensional Gaussian vectors ``x``; task ``direction`` classifies which of ``x[0], x[1], x[2]`` is the
largest (3 classes), task ``total`` regresses ``x.sum()``. Both are learnable by a small MLP in a few hundred steps.
"""

from __future__ import annotations

from pathlib import Path

DATA = '''"""Random vectors with two targets: which of the first three features is largest, and the sum of all."""

from __future__ import annotations

import torch

from mtl_train.data.base import MultiTaskData, TensorSplit


class Blobs:
    """Inputs ``(N, features)`` float32 (flat vectors: in_channels = features, no spatial dims); targets
    ``direction`` ``(N,)`` int64 in {0, 1, 2} and ``total`` ``(N,)`` float32."""

    def __init__(self, num_train: int = 512, num_val: int = 128, num_test: int = 128, features: int = 8,
                 seed: int = 0) -> None:
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.features = features
        self.seed = seed

    def split(self, rows: int, generator: torch.Generator) -> TensorSplit:
        x = torch.randn(rows, self.features, generator=generator)
        return TensorSplit(x, {"direction": x[:, :3].argmax(dim=1), "total": x.sum(dim=1)})

    def build(self) -> MultiTaskData:
        generator = torch.Generator().manual_seed(self.seed)
        splits = {name: self.split(rows, generator) for name, rows in self.sizes.items()}
        return MultiTaskData(**splits, sources={"generator": "my_mtl.data.Blobs", "seed": self.seed})
'''

NET = '''"""A hard-shared MLP trunk for flat vectors: every parameter is shared, the heads alone are per task."""

from __future__ import annotations

from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer


class MLPTrunk(Backbone):
    spatial_dims = 0

    def __init__(self, task_names: list[str], in_channels: int, input_size: tuple[int, ...], hidden: int = 32,
                 depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(depth):
            layers += [nn.Linear(in_channels if index == 0 else hidden, hidden), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.out_channels = hidden

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        return z

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []

    def last_shared_layer(self) -> nn.Module:
        return last_weighted_layer(self.trunk)
'''

HEADS = '''"""A linear head on flat features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class LinearHead(nn.Module):
    """``(B, num_outputs)`` from features ``(B, in_channels)``; ``(B,)`` when ``num_outputs`` is 1."""

    def __init__(self, in_channels: int, spatial_dims: int, num_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, num_outputs)

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        out = self.linear(features)
        return out.squeeze(1) if out.shape[1] == 1 else out
'''

METRICS = '''"""The share of predictions within a tolerance of the target."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_train.metrics.base import TaskMetric


class WithinTolerance(TaskMetric):
    higher_is_better = {"within": True}
    primary = "within"

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.reset()

    def reset(self) -> None:
        self._hits: Tensor | None = None    # private tensors and ints are summed over DDP ranks
        self._count: Tensor | None = None

    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
        if self._hits is None or self._count is None:
            self._hits = torch.zeros((), dtype=torch.int64, device=prediction.device)
            self._count = torch.zeros((), dtype=torch.int64, device=prediction.device)
        self._hits += ((prediction - target).abs() <= self.tolerance).sum()
        self._count += target.numel()

    def compute(self) -> dict[str, float]:
        if self._hits is None or self._count is None:
            raise ValueError("WithinTolerance.compute() called before any update()")
        return {"within": self._hits.item() / self._count.item()}
'''

LOSSES = '''"""log(cosh(error)): about error^2 / 2 for small errors and |error| - log 2 for large ones."""

from __future__ import annotations

import math

from torch import Tensor, nn


class LogCosh(nn.Module):
    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        error = output - target
        return (error.abs() + nn.functional.softplus(-2 * error.abs()) - math.log(2)).mean()
'''

DATASET_YAML = """# My random vectors (my_mtl/data.py).
#   mtl-train --config-dir configs task=my_tasks dataset.num_train=2048
_target_: my_mtl.data.Blobs
num_train: 512
num_val: 128
num_test: 128
features: 8
seed: 0
"""

BACKBONE_YAML = """# My MLP trunk (my_mtl/net.py), every layer shared.
#   mtl-train --config-dir configs task=my_tasks backbone.hidden=64
_target_: my_mtl.net.MLPTrunk
hidden: 32
depth: 2
"""

HEAD_YAML = """# A linear head on flat features (my_mtl/heads.py).   heads@task.<name>.head=linear
_target_: my_mtl.heads.LinearHead
num_outputs: ${..num_outputs}
"""

TASK_YAML = """# @package _global_
# My two tasks on my data and trunk.   mtl-train --config-dir configs task=my_tasks weighting=uw
defaults:
  - /heads@task.direction.head: linear
  - /loss@task.direction.loss: cross_entropy
  - /heads@task.total.head: linear
  - /loss@task.total.loss: log_cosh
  - _self_
  - override /dataset: my_data
  - override /backbone: my_net

task:
  direction:
    target: direction
    num_outputs: 3
    metric:
      _target_: mtl_train.metrics.classification.ClassificationMetrics
      num_classes: ${..num_outputs}
  total:
    target: total
    num_outputs: 1
    metric:
      _target_: my_mtl.metrics.WithinTolerance
      tolerance: 0.5
"""

LOSS_YAML = """# log(cosh(error)), a smooth L1 (my_mtl/losses.py).   loss@task.<name>.loss=log_cosh
_target_: my_mtl.losses.LogCosh
"""

EXPERIMENT_YAML = """# @package _global_
# My tasks with a faster learning rate on the CPU.   mtl-train --config-dir configs experiment=my_exp
defaults:
  - override /task: my_tasks

optimizer:
  lr: 3.0e-2
trainer:
  device: cpu
  batch_size: 64
  max_epochs: 4
  plots: false
"""

FILES = {
    "my_mtl/__init__.py": "",
    "my_mtl/data.py": DATA,
    "my_mtl/net.py": NET,
    "my_mtl/heads.py": HEADS,
    "my_mtl/metrics.py": METRICS,
    "my_mtl/losses.py": LOSSES,
    "configs/dataset/my_data.yaml": DATASET_YAML,
    "configs/backbone/my_net.yaml": BACKBONE_YAML,
    "configs/heads/linear.yaml": HEAD_YAML,
    "configs/loss/log_cosh.yaml": LOSS_YAML,
    "configs/task/my_tasks.yaml": TASK_YAML,
    "configs/experiment/my_exp.yaml": EXPERIMENT_YAML,
}
"""The user project, by path relative to its root."""


def write_user_project(root: Path) -> None:
    """Write :data:`FILES` under ``root``."""
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
