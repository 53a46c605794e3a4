"""Multi-task datasets: inputs plus one target tensor per target name, per split.

A split's inputs are usually the model's inputs already (float32, in memory). They may instead be stored as they
are on disk and prepared per batch: a tensor over a memory-mapped ``.npy`` file (:func:`mapped_tensor`) of any
numeric dtype, only some of whose rows belong to the split (``input_rows``), standardised per channel after each
gather (``mean``, ``std``). Nothing of such a split is read until a batch is gathered (:meth:`TensorSplit.batch`),
so it can be larger than memory; the trainer streams it (:mod:`mtl_train.engine.batches`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


def mapped_tensor(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory, e.g. a memory map (``numpy.load(path, mmap_mode="r")``): no row is
    read until it is gathered. A read-only map is fine: batches are gathered copies, nothing writes to it."""
    with warnings.catch_warnings():  # torch warns that it cannot protect a read-only array from writes
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def normalized(inputs: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(inputs - mean) / std`` per channel (axis 1) of ``(N, C, *spatial)`` inputs."""
    shape = (1, -1, *([1] * (inputs.dim() - 2)))
    return (inputs - mean.view(shape)) / std.view(shape)


@dataclass
class TensorSplit:
    """One split of a dataset, held as tensors.

    ``inputs`` has shape ``(M, C, *spatial)``; every tensor in ``targets`` has one row per row of the split (int64
    class indices or float32 values). Target names (``"label"``, ``"mask"``, ``"clean"``, ...) are what task
    configs refer to. The split's model inputs are float32 rows of ``inputs``:

    * ``input_rows``: which rows of ``inputs`` the split's rows are, in order (None: all ``M``, so the split has
      ``M`` rows). A split can so be a part of one array without reading it;
    * ``mean``, ``std``: ``(C,)`` per-channel statistics; when set, every gathered batch is standardised,
      ``(x - mean) / std`` (:func:`normalized`).

    ``inputs`` may be of any numeric dtype (``uint8`` images) and memory-mapped (:func:`mapped_tensor`): it is
    converted to float32 per batch. Without ``input_rows`` and statistics, and float32, the inputs are the model's
    inputs as they are (:attr:`prepared`), as every built-in dataset holds them.
    """

    inputs: Tensor
    targets: dict[str, Tensor]
    input_rows: Tensor | None = None
    mean: Tensor | None = None
    std: Tensor | None = None

    def __post_init__(self) -> None:
        if self.input_rows is not None and (self.input_rows.dim() != 1 or self.input_rows.is_floating_point()):
            raise ValueError(f"input_rows must be a 1-D integer tensor, got {self.input_rows.dtype} of shape "
                             f"{tuple(self.input_rows.shape)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std are given together (per-channel normalisation) or not at all")
        channels = self.inputs.shape[1] if self.inputs.dim() > 1 else 1
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and value.shape != (channels,):
                raise ValueError(f"{name} must have one value per input channel, shape ({channels},), "
                                 f"got {tuple(value.shape)}")
        n = len(self)
        for name, target in self.targets.items():
            if target.shape[0] != n:
                raise ValueError(f"target {name!r} has {target.shape[0]} rows, inputs have {n}")

    def __len__(self) -> int:
        return self.inputs.shape[0] if self.input_rows is None else self.input_rows.shape[0]

    @property
    def prepared(self) -> bool:
        """Whether ``inputs`` are the split's model inputs as they are: float32, one row per split row, no
        normalisation left to apply."""
        return self.input_rows is None and self.mean is None and self.inputs.dtype == torch.float32

    def prepare_inputs(self, raw: Tensor) -> Tensor:
        """Gathered rows of ``inputs`` as model inputs: float32, standardised when the split has statistics."""
        values = raw.float()
        if self.mean is None:
            return values
        return normalized(values, self.mean.to(values.device), self.std.to(values.device))

    def batch(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The model inputs and the targets of the split's rows ``index``: one gather per tensor, then
        :meth:`prepare_inputs`."""
        stored = index if self.input_rows is None else self.input_rows[index]
        return self.prepare_inputs(self.inputs[stored]), {name: t[index] for name, t in self.targets.items()}

    def select(self, indices: Tensor) -> TensorSplit:
        """The split's rows ``indices`` as a split, reading no input row: the inputs stay where they are (the
        rows are composed into ``input_rows``); the targets are gathered."""
        stored = indices if self.input_rows is None else self.input_rows[indices]
        return TensorSplit(self.inputs, {k: v[indices] for k, v in self.targets.items()}, stored, self.mean, self.std)

    def subset(self, indices: Tensor) -> TensorSplit:
        """Rows ``indices`` as a prepared split, in memory (:meth:`batch`)."""
        inputs, targets = self.batch(indices)
        return TensorSplit(inputs, targets)

    def head(self, n: int | None) -> TensorSplit:
        """The first ``n`` rows (all rows when ``n`` is None) as a prepared split: the split itself when it is
        prepared and has no more rows, else :meth:`subset`."""
        n = len(self) if n is None else min(n, len(self))
        if n == len(self) and self.prepared:
            return self
        return self.subset(torch.arange(n))

    def to(self, device: torch.device | str) -> TensorSplit:
        """The split prepared (every row read, converted and standardised) on ``device``; a prepared split already
        there is returned as it is."""
        inputs = self.inputs if self.input_rows is None else self.inputs[self.input_rows]
        return TensorSplit(self.prepare_inputs(inputs.to(device)), {k: v.to(device) for k, v in self.targets.items()})

    @property
    def prepared_bytes(self) -> int:
        """Bytes the split takes once prepared (:meth:`to`): float32 inputs and the targets."""
        input_bytes = len(self) * math.prod(self.inputs.shape[1:]) * 4
        return input_bytes + sum(t.numel() * t.element_size() for t in self.targets.values())


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
