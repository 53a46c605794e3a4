"""Multi-Task Attention Network (MTAN): one shared CNN trunk, and per task a chain of soft-attention masks over it.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (arXiv:1803.10704); the
encoder side (the paper also puts attention modules in a SegNet decoder, which the heads here replace).

The shared trunk has S stages. Stage s runs two Conv -> BatchNorm -> ReLU layers: u_s is the output of the first,
p_s of the second, and the next stage reads MaxPool(2)(p_s). Task t holds one attention module Att_t,s per stage and
builds its own features along the trunk:

    a_t,0 = Att_t,0(u_0)                                        the stage-0 mask sees the shared u_0 only
    a_t,s = Att_t,s([u_s ; MaxPool(2)(f_s(a^_t,s-1))])          s >= 1: u_s and the task's previous features
    a^_t,s = a_t,s * p_s                                        (element-wise; the mask selects from p_s)

and its head reads MaxPool(2)(a^_t,S-1), of the trunk's output shape. Att = Conv1x1(in -> c_s) -> BatchNorm -> ReLU
-> Conv1x1(c_s -> c_s) -> BatchNorm -> Sigmoid, so every mask entry is in (0, 1); in = c_0 at stage 0 and 2 c_s
after. f_s (Conv(c_{s-1} -> c_s) -> BatchNorm -> ReLU, the trunk's kernel size) brings the previous features to
stage s's channels; as in the paper it is one module per stage *shared by all tasks*. Pooling follows f_s, as in
the authors' code. With c the widths in ``channels``, K = kernel_size^D (D = spatial_dims) and k tasks, the
parameter counts are (convolutions before a BatchNorm have no bias, except the attention modules' 1x1 ones, which
keep it as in the authors' and LibMTL's code):

    trunk          sum_s  K c_{s-1} c_s + K c_s^2 + 4 c_s           (c_{-1} = in_channels)
    f              sum_{s>=1}  K c_{s-1} c_s + 2 c_s
    attention      k * sum_s  c_in,s c_s + c_s^2 + 6 c_s            (c_in,0 = c_0, c_in,s = 2 c_s after)

Shared and task parameters. The trunk and the f_s are shared (every task's features pass through them); task t's
attention modules are ``task_parameters(t)``: only task t's output depends on them. Since the f_s, shared, act on
each task's own features, ``encode`` computes the whole network: z is every task's attended output, stacked
``(k, B, C, *spatial)``, one per task (``shares_representation = False``: ``weighting.mode=rep`` is refused, as
for soft sharing; LibMTL likewise has no representation common to the tasks). The per-task gradients of
``weighting.mode=params`` are taken over the trunk and the f_s together. (LibMTL leaves its counterpart of f_s out
of the shared parameters, so gradient methods see it with the plain sum of the task gradients.) GradNorm's W is the
trunk's last convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone
from mtl_train.backbones.cnn import _CONV, _NORM, _POOL, check_downsampling
from mtl_train.errors import ConfigError


def conv_layer(in_channels: int, out_channels: int, kernel_size: int, stride: int, spatial_dims: int) -> nn.Sequential:
    """Conv(kernel, stride, same-padding, no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        _CONV[spatial_dims](in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        _NORM[spatial_dims](out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionModule(nn.Module):
    """Conv1x1(in -> out) -> BatchNorm -> ReLU -> Conv1x1(out -> out) -> BatchNorm -> Sigmoid: a mask in (0, 1).
    The convolutions keep their bias, as in the authors' code (so LibMTL's ResNet-18 sizes, stage s with
    (in, out) = (64, 64), (256, 128), (512, 256), (1024, 512), total 1,046,144 parameters per task)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        self.layers = nn.Sequential(
            conv(in_channels, out_channels, 1), norm(out_channels), nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 1), norm(out_channels), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MTANBackbone(Backbone):
    """A shared two-layer-per-stage CNN trunk with per-task attention masks (see the module docstring)."""

    shares_representation = False

    def __init__(
        self,
        task_names: Sequence[str],
        in_channels: int,
        input_size: Sequence[int],
        spatial_dims: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        first_stride: int = 1,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ConfigError(f"backbone.spatial_dims must be 1 (signals) or 2 (images), got {spatial_dims}")
        if len(input_size) != spatial_dims:
            raise ConfigError(
                f"backbone.spatial_dims={spatial_dims} does not fit the data's {len(input_size)}-D inputs "
                f"{tuple(input_size)}; pick the backbone's 1d variant for signals and its 2d variant for images")
        if len(channels) == 0:
            raise ConfigError("backbone.channels must list at least one stage width")
        check_downsampling(input_size, first_stride * 2 ** len(channels), "backbone.channels (one pooling stage each)")
        self.task_names = list(task_names)
        self.out_channels = channels[-1]
        self.spatial_dims = spatial_dims
        widths = [in_channels, *channels]
        self.trunk = nn.ModuleList(
            nn.ModuleList([conv_layer(widths[s], widths[s + 1], kernel_size, first_stride if s == 0 else 1,
                                      spatial_dims),
                           conv_layer(widths[s + 1], widths[s + 1], kernel_size, 1, spatial_dims)])
            for s in range(len(channels))
        )
        self.pool = _POOL[spatial_dims](2)
        self.shared_blocks = nn.ModuleList(
            conv_layer(channels[s - 1], channels[s], kernel_size, 1, spatial_dims) for s in range(1, len(channels)))
        self.attention = nn.ModuleDict({
            task: nn.ModuleList(AttentionModule(channels[s] if s == 0 else 2 * channels[s], channels[s], spatial_dims)
                                for s in range(len(channels)))
            for task in self.task_names
        })

    def trunk_features(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(u_s, p_s) of every stage s of the shared trunk."""
        features, h = [], x
        for first, second in self.trunk:
            u = first(h)
            p = second(u)
            features.append((u, p))
            h = self.pool(p)
        return features

    def attend(self, task: str, features: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """``task``'s features MaxPool(2)(a^_t,S-1) and its masks a_t,0..S-1, from the trunk's (u_s, p_s)."""
        masks, attended = [], None
        for s, ((u, p), module) in enumerate(zip(features, self.attention[task])):
            seen = u if s == 0 else torch.cat([u, self.pool(self.shared_blocks[s - 1](attended))], dim=1)
            masks.append(module(seen))
            attended = masks[-1] * p
        return self.pool(attended), masks

    def attention_masks(self, x: Tensor) -> dict[str, list[Tensor]]:
        """Every task's masks a_t,s, ``(B, c_s, *spatial_s)`` per stage, for the input batch x."""
        features = self.trunk_features(x)
        return {task: self.attend(task, features)[1] for task in self.task_names}

    def encode(self, x: Tensor) -> Tensor:
        """Every task's attended features stacked: ``(k, B, C, *spatial)`` in the order of ``task_names``."""
        features = self.trunk_features(x)
        return torch.stack([self.attend(task, features)[0] for task in self.task_names])

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """``task``'s own attended features."""
        return z[self.task_names.index(task)]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk and the shared f_s blocks."""
        return [*self.trunk.parameters(), *self.shared_blocks.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s attention modules."""
        return list(self.attention[task].parameters())

    def last_shared_layer(self) -> nn.Module:
        """The trunk's last convolution (the one producing p_S-1)."""
        return self.trunk[-1][1][0]
