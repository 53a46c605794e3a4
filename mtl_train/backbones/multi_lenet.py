"""Sener & Koltun's MultiLeNet encoder (MultiMNIST), hard-shared up to ``split_depth`` blocks.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (``models/multi_lenet.py``):

    Conv(in, 10, 5) -> MaxPool(2) -> ReLU                                    block 1
    Conv(10, 20, 5) -> channel dropout (Dropout2d, p) -> MaxPool(2) -> ReLU  block 2
    flatten -> Linear(flat, 50) -> ReLU                                      block 3

``flat`` = 20 * h * w with h = ((H - 4) // 2 - 4) // 2 (likewise w): 320 for 28x28 inputs (Sener), 720 for 36x36
(COSMOS's MultiLeNet). ``dropout=0`` gives the Aligned-MTL repository's LeNetEncoder. The output is a flat
``(B, 50)`` feature vector (``spatial_dims = 0``), so only heads that accept flat features apply (classification);
Sener's task head is ``configs/heads/multi_lenet_classification.yaml``.

Channel dropout is ``nn.Dropout2d``: one Bernoulli mask per sample and channel, kept channels scaled by 1/(1-p),
off in eval mode. Sener's code instead draws one ``(1, C, 1, 1)`` mask for the whole batch and does not rescale.
Either way the mask is drawn once per forward, so every per-task backward of a step (gradient probes, then the
weighted update) sees the same mask, as in Sener's code.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.errors import ConfigError

FEATURES = 50


def multi_lenet(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    dropout: float = 0.5,
    split_depth: int | None = None,
) -> HardSharedBackbone:
    """MultiLeNet's three blocks; the first ``split_depth`` shared (all of them when None)."""
    if len(input_size) != 2:
        raise ConfigError(f"backbone=multi_lenet reads images, but the data's inputs are {len(input_size)}-D "
                          f"{tuple(input_size)}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"backbone.dropout must be in [0, 1), got {dropout}")
    height, width = (((size - 4) // 2 - 4) // 2 for size in input_size)
    if min(height, width) < 1:
        raise ConfigError(f"backbone=multi_lenet needs inputs of at least 16x16 (two 5x5 convolutions and two "
                          f"poolings), got {tuple(input_size)}")
    blocks = [
        nn.Sequential(nn.Conv2d(in_channels, 10, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Flatten(), nn.Linear(20 * height * width, FEATURES), nn.ReLU(inplace=True)),
    ]
    return HardSharedBackbone(
        blocks,
        task_names,
        split_depth=len(blocks) if split_depth is None else split_depth,
        out_channels=FEATURES,
        spatial_dims=0,
    )
