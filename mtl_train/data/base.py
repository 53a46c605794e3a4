"""In-memory multi-task datasets: inputs plus one target tensor per target name, per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TensorSplit:
    """One split of a dataset, held as tensors.

    ``inputs`` has shape ``(N, C, *spatial)`` (float32); every tensor in ``targets`` has ``N`` rows.
    Target names (``"label"``, ``"mask"``, ``"clean"``, ...) are what task configs refer to.
    """

    inputs: Tensor
    targets: dict[str, Tensor]

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        for name, target in self.targets.items():
            if target.shape[0] != n:
                raise ValueError(f"target {name!r} has {target.shape[0]} rows, inputs have {n}")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, indices: Tensor) -> TensorSplit:
        """Rows ``indices`` of every tensor."""
        return TensorSplit(self.inputs[indices], {k: v[indices] for k, v in self.targets.items()})

    def head(self, n: int | None) -> TensorSplit:
        """The first ``n`` rows (all rows when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return self.subset(torch.arange(n))

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.inputs.to(device), {k: v.to(device) for k, v in self.targets.items()})


@dataclass
class MultiTaskData:
    """Train/val/test splits plus the shape facts models are built from.

    ``sources`` records where the data came from (:mod:`mtl_train.data.sources`): the files read, with their
    absolute paths and SHA-256, or the generator and seed of synthetic data. Hand-built data leaves it empty.
    """

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return self.train.inputs.shape[1]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[2:])

    @property
    def target_names(self) -> list[str]:
        return list(self.train.targets)
