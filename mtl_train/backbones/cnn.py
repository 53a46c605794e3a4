"""A plain convolutional trunk for 1-D signals (ECG) or 2-D images (MNIST family).

Each block is Conv -> BatchNorm -> ReLU -> MaxPool(2), the layout of the small CNNs used in multi-task
benchmarks (e.g. Sener & Koltun, NeurIPS 2018, MultiLeNet). The trunk is hard-shared up to
``split_depth`` blocks (see :mod:`mtl_train.backbones.hard`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.errors import ConfigError

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}


def conv_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, spatial_dims: int) -> nn.Sequential:
    """Conv(kernel, stride, same-padding) -> BatchNorm -> ReLU -> MaxPool(2)."""
    return nn.Sequential(
        _CONV[spatial_dims](in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        _NORM[spatial_dims](out_channels),
        nn.ReLU(inplace=True),
        _POOL[spatial_dims](2),
    )


def hard_cnn(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    spatial_dims: int,
    channels: Sequence[int] = (16, 32, 64),
    kernel_size: int = 3,
    first_stride: int = 1,
    split_depth: int | None = None,
) -> HardSharedBackbone:
    """A CNN with ``len(channels)`` blocks, the first ``split_depth`` shared (all of them when None).

    ``first_stride`` > 1 downsamples long signals early (e.g. 2 for 2,500-sample ECG segments). ``input_size`` (the
    data's spatial size) is checked against the trunk's total downsampling.
    """
    blocks = conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride)
    return HardSharedBackbone(
        blocks,
        task_names,
        split_depth=len(blocks) if split_depth is None else split_depth,
        out_channels=channels[-1],
        spatial_dims=spatial_dims,
    )


def conv_blocks(
    in_channels: int,
    input_size: Sequence[int],
    spatial_dims: int,
    channels: Sequence[int],
    kernel_size: int,
    first_stride: int,
) -> list[nn.Sequential]:
    """One :func:`conv_block` per entry of ``channels`` (the first with ``first_stride``), checked against the
    input: the trunk of :func:`hard_cnn`, the towers of soft sharing and cross-stitch networks, MMoE's experts."""
    if spatial_dims not in _CONV:
        raise ConfigError(f"backbone.spatial_dims must be 1 (signals) or 2 (images), got {spatial_dims}")
    if len(input_size) != spatial_dims:
        raise ConfigError(
            f"backbone.spatial_dims={spatial_dims} does not fit the data's {len(input_size)}-D inputs "
            f"{tuple(input_size)}; pick the backbone's 1d variant for signals and its 2d variant for images"
        )
    if len(channels) == 0:
        raise ConfigError("backbone.channels must list at least one block width")
    check_downsampling(input_size, first_stride * 2 ** len(channels), "backbone.channels (one pooling block each)")
    widths = [in_channels, *channels]
    return [
        conv_block(widths[i], widths[i + 1], kernel_size, first_stride if i == 0 else 1, spatial_dims)
        for i in range(len(channels))
    ]


def check_downsampling(input_size: Sequence[int], factor: int, key: str) -> None:
    """Raise :class:`ConfigError` when downsampling ``input_size`` by ``factor`` would leave nothing."""
    if min(input_size) < factor:
        raise ConfigError(
            f"{key} downsamples by {factor}x, more than the input's size {tuple(input_size)} allows; "
            "use fewer blocks or a larger input"
        )
