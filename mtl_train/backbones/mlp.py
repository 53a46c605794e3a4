"""A multi-layer perceptron trunk for vector / tabular inputs, hard-shared up to ``split_depth`` layers.

Each hidden layer is Linear -> norm -> ReLU -> Dropout, the usual shared-bottom network of tabular multi-task
learning (Caruana, "Multitask Learning", 1997; the shared-bottom baseline of Ma et al., KDD 2018). ``norm`` is
``none``, ``layer`` (LayerNorm, Ba et al., 2016) or ``batch`` (BatchNorm1d, Ioffe & Szegedy, ICML 2015).

The input is flattened: a table ``(N, F)`` reads its F features, a signal ``(N, C, L)`` or an image
``(N, C, H, W)`` all its values, so ``in_features = in_channels * prod(input_size)`` (``input_size`` is ``()`` for
a table). The output is a flat ``(N, hidden[-1])`` feature vector (``spatial_dims = 0``): classification and
regression heads read it; dense and reconstruction heads, which predict per sample/pixel, do not.

The layers are a :class:`~mtl_train.backbones.hard.HardSharedBackbone`'s blocks: the first ``split_depth``
(all when None) are shared, so their output is the shared representation z of ``weighting.mode=rep``, and the
rest are copied per task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.errors import ConfigError

NORMS = ("none", "layer", "batch")


class RowBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the rows of a batch, which stops with a :class:`ConfigError` naming the fix when training
    meets a batch of one row (one value per unit has no variance: plain BatchNorm1d raises a ValueError there)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            raise ConfigError(
                "backbone.norm=batch cannot normalise a training batch of one row (the last batch of an epoch when "
                "the train split's size is 1 more than a multiple of trainer.batch_size); change trainer.batch_size "
                "or use backbone.norm=layer"
            )
        return super().forward(x)


def mlp_layer(in_features: int, out_features: int, norm: str, dropout: float) -> nn.Sequential:
    """Linear -> norm (``none`` | ``layer`` | ``batch``) -> ReLU -> Dropout (left out when ``dropout`` is 0)."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    if norm == "layer":
        layers.append(nn.LayerNorm(out_features))
    elif norm == "batch":
        layers.append(RowBatchNorm(out_features))
    layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def mlp_layers(
    in_channels: int, input_size: Sequence[int], hidden: Sequence[int], norm: str, dropout: float
) -> list[nn.Sequential]:
    """One :func:`mlp_layer` per entry of ``hidden``, the first flattening the input: the trunk of :func:`mlp` and
    the experts of :func:`mtl_train.backbones.mmoe.mmoe_mlp`."""
    if len(hidden) == 0 or min(hidden) < 1:
        raise ConfigError(f"backbone.hidden must list at least one positive layer width, got {list(hidden)}")
    if norm not in NORMS:
        raise ConfigError(f"backbone.norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"backbone.dropout must be in [0, 1), got {dropout}")
    widths = [in_channels * math.prod(input_size), *hidden]
    layers = [mlp_layer(widths[i], widths[i + 1], norm, dropout) for i in range(len(hidden))]
    layers[0].insert(0, nn.Flatten())
    return layers


def mlp(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    hidden: Sequence[int] = (256, 128),
    norm: str = "none",
    dropout: float = 0.0,
    split_depth: int | None = None,
) -> HardSharedBackbone:
    """An MLP with ``len(hidden)`` layers, the first ``split_depth`` shared (all of them when None)."""
    layers = mlp_layers(in_channels, input_size, hidden, norm, dropout)
    return HardSharedBackbone(
        layers,
        task_names,
        split_depth=len(layers) if split_depth is None else split_depth,
        out_channels=hidden[-1],
        spatial_dims=0,
    )
