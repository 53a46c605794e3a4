"""Progressive Layered Extraction (PLE) and its one-level form, Customized Gate Control (CGC).

Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", ACM RecSys 2020 (DOI 10.1145/3383313.3412236).

**CGC** (one extraction level). There are ``num_shared_experts`` shared experts E_s and ``num_task_experts`` experts
E_t of each task t's own. Task t's gate mixes its own experts and the shared ones:

    features_t(x) = sum_e w_t(x)_e * S_t(x)_e,   S_t(x) = [E_t,1(x), ..., E_s,1(x), ...],
    w_t(x) = softmax(W_t flatten(x) + b_t)

(with no task experts this is MMoE, :mod:`mtl_train.backbones.mmoe`).

**PLE** stacks ``num_levels`` such levels. At level j, task t's experts and gate read task t's output of level
j - 1, h_t^(j-1) (the input x at the first level), and the shared experts read the output of a *shared gate*,
h_s^(j-1). Below the last level, the shared gate mixes *every* expert of the level (each task's and the shared
ones) with softmax(W_s^j flatten(h_s^(j-1))): that is how the tasks' own experts feed the shared ones. The last
level has task gates only. Every gate is one linear layer on its flattened input plus a softmax, LibMTL's gate.
Expert order in a gate: the task's own experts, then the shared ones (the shared gate: task 1's, ..., task k's,
then the shared ones).

Experts: the blocks of :func:`mtl_train.backbones.cnn.hard_cnn` (``ple_cnn``) or of :func:`mtl_train.backbones.mlp.mlp`
(``ple_mlp``), split into ``num_levels`` consecutive groups, earlier levels taking the extra block when the count
does not divide: ``channels: [16, 32, 64]`` and 2 levels give level-1 experts of blocks [16, 32] and level-2
experts of block [64]. ``num_levels: 1`` is CGC, every expert then being the whole stack (as MMoE's).

Departure from LibMTL's PLE, which has no shared gate and runs the shared experts of each level on every task's
representation: this module follows the paper (shared gate, shared experts run once on the shared branch).

Shared and task parameters. Below the last level, every task's experts feed the shared gate, so every task's output
depends on them: the shared parameters are every expert and gate below the last level (including task t's gates
there, on which only task t depends: their gradient rows are zero for the other tasks), and the last level's
shared experts. ``task_parameters(t)`` is task t's last-level experts and gate. z (what ``encode`` returns and
``weighting.mode=rep`` differentiates) is, flattened and concatenated per sample, the last level's shared-expert
outputs followed by every task's h_t of the level below (the latter only for ``num_levels`` >= 2; with CGC the
task experts read x): task t reads the shared part and its own h_t. GradNorm's W is the last convolution (linear
layer) of every last-level shared expert.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.backbones.cnn import conv_block, conv_blocks
from mtl_train.backbones.mlp import mlp_layer, mlp_layers
from mtl_train.errors import ConfigError


def level_groups(num_blocks: int, num_levels: int) -> list[range]:
    """``num_blocks`` block indices in ``num_levels`` consecutive groups, the first ``num_blocks % num_levels`` one
    block longer."""
    if not 1 <= num_levels <= num_blocks:
        raise ConfigError(f"backbone.num_levels must be between 1 and the number of blocks ({num_blocks}), got "
                          f"{num_levels}; every level's experts need at least one block")
    size, extra = divmod(num_blocks, num_levels)
    bounds = [0]
    for level in range(num_levels):
        bounds.append(bounds[-1] + size + (level < extra))
    return [range(bounds[i], bounds[i + 1]) for i in range(num_levels)]


def output_shape(module: nn.Module, in_shape: Sequence[int]) -> tuple[int, ...]:
    """The per-sample output shape of ``module`` on per-sample inputs of ``in_shape`` (one eval-mode forward of a
    zero sample; the module's training mode is restored)."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        shape = tuple(module(torch.zeros(1, *in_shape)).shape[1:])
    module.train(was_training)
    return shape


def mix(weights: Tensor, experts: Sequence[Tensor]) -> Tensor:
    """``sum_e weights[:, e] * experts[e]``: ``(B, n)`` weights, n tensors of shape ``(B, *feature)``."""
    return torch.einsum("bn,bn...->b...", weights, torch.stack(list(experts), dim=1))


def gate_weights(gate: nn.Linear, h: Tensor) -> Tensor:
    """``softmax(gate(flatten(h)))``: ``(B, n)``, each row on the simplex."""
    return torch.softmax(gate(torch.flatten(h, 1)), dim=1)


class ProgressiveLayeredExtraction(Backbone):
    """PLE over experts built by ``levels[j]()`` at level j (CGC when there is one level); see the module docstring.

    ``input_shape`` is one sample's shape ``(C, *spatial)``; ``out_channels``/``spatial_dims`` describe the last
    level's expert output.
    """

    def __init__(
        self,
        levels: Sequence[Callable[[], nn.Module]],
        task_names: Sequence[str],
        input_shape: Sequence[int],
        num_shared_experts: int,
        num_task_experts: int,
        out_channels: int,
        spatial_dims: int,
    ) -> None:
        super().__init__()
        if num_shared_experts < 1 or num_task_experts < 0:
            raise ConfigError(f"backbone.num_shared_experts must be >= 1 and backbone.num_task_experts >= 0, got "
                              f"{num_shared_experts} and {num_task_experts}; with no shared expert no parameter is "
                              "shared")
        self.task_names = list(task_names)
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.num_levels = len(levels)
        self.shared_experts = nn.ModuleList(
            nn.ModuleList(make() for _ in range(num_shared_experts)) for make in levels)
        self.task_experts = nn.ModuleDict({
            task: nn.ModuleList(nn.ModuleList(make() for _ in range(num_task_experts)) for make in levels)
            for task in self.task_names
        })
        self.shapes = [tuple(input_shape)]  # per-sample input shape of each level, then the last level's output
        for experts in self.shared_experts:
            self.shapes.append(output_shape(experts[0], self.shapes[-1]))
        features = [math.prod(shape) for shape in self.shapes]
        self.task_gates = nn.ModuleDict({
            task: nn.ModuleList(nn.Linear(features[j], num_task_experts + num_shared_experts)
                                for j in range(self.num_levels))
            for task in self.task_names
        })
        every_expert = len(self.task_names) * num_task_experts + num_shared_experts
        self.shared_gates = nn.ModuleList(nn.Linear(features[j], every_expert) for j in range(self.num_levels - 1))

    def lower_levels(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every level but the last: ``([h_t for each task], h_s)``, each task's output and the shared gate's output
        of the level below the last (x for all when there is one level)."""
        tasks, shared = [x] * len(self.task_names), x
        for j in range(self.num_levels - 1):
            shared_out = [expert(shared) for expert in self.shared_experts[j]]
            task_out = [[expert(h) for expert in self.task_experts[task][j]] for task, h in zip(self.task_names, tasks)]
            next_tasks = [mix(gate_weights(self.task_gates[task][j], h), [*own, *shared_out])
                          for task, h, own in zip(self.task_names, tasks, task_out)]
            every = [out for own in task_out for out in own]
            shared = mix(gate_weights(self.shared_gates[j], shared), [*every, *shared_out])
            tasks = next_tasks
        return tasks, shared

    def encode(self, x: Tensor) -> Tensor:
        """z: ``(B, F)``, the last level's shared-expert outputs and (with two levels or more) every task's output of
        the level below, flattened and concatenated in that order."""
        tasks, shared = self.lower_levels(x)
        pieces = [expert(shared) for expert in self.shared_experts[-1]]
        if self.num_levels > 1:
            pieces += tasks
        return torch.cat([torch.flatten(p, 1) for p in pieces], dim=1)

    def unpack(self, task: str, z: Tensor, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(the last level's shared-expert outputs, ``task``'s input to the last level) read back from z."""
        batch, out_shape, in_shape = z.shape[0], self.shapes[-1], self.shapes[-2]
        out_size, in_size = math.prod(out_shape), math.prod(in_shape)
        shared = [z[:, e * out_size:(e + 1) * out_size].view(batch, *out_shape)
                  for e in range(len(self.shared_experts[-1]))]
        if self.num_levels == 1:
            return shared, x
        start = len(shared) * out_size + self.task_names.index(task) * in_size
        return shared, z[:, start:start + in_size].view(batch, *in_shape)

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """The last level for ``task``: its gate on h_t over its own experts (on h_t) and the shared outputs in z."""
        shared, h = self.unpack(task, z, x)
        own = [expert(h) for expert in self.task_experts[task][-1]]
        return mix(gate_weights(self.task_gates[task][-1], h), [*own, *shared])

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s last-level experts and gate."""
        return [*self.task_experts[task][-1].parameters(), *self.task_gates[task][-1].parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not a task's last-level expert or gate."""
        own = {id(p) for task in self.task_names for p in self.task_parameters(task)}
        return [p for p in self.parameters() if id(p) not in own]

    def last_shared_layer(self) -> nn.Module:
        """The last convolution (linear layer for MLP experts) of every last-level shared expert."""
        return nn.ModuleList(last_weighted_layer(expert) for expert in self.shared_experts[-1])


def ple_cnn(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    spatial_dims: int,
    num_levels: int = 2,
    num_shared_experts: int = 2,
    num_task_experts: int = 1,
    channels: Sequence[int] = (16, 32, 64),
    kernel_size: int = 3,
    first_stride: int = 1,
) -> ProgressiveLayeredExtraction:
    """PLE (CGC with ``num_levels=1``) whose experts are the Conv -> BatchNorm -> ReLU -> MaxPool(2) blocks of
    ``channels``, split into ``num_levels`` levels."""
    conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride)  # checks the sizes
    widths = [in_channels, *channels]

    def level(blocks: range) -> Callable[[], nn.Module]:
        return lambda: nn.Sequential(*(conv_block(widths[i], widths[i + 1], kernel_size,
                                                  first_stride if i == 0 else 1, spatial_dims) for i in blocks))

    levels = [level(blocks) for blocks in level_groups(len(channels), num_levels)]
    return ProgressiveLayeredExtraction(levels, task_names, (in_channels, *input_size), num_shared_experts,
                                        num_task_experts, channels[-1], spatial_dims)


def ple_mlp(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    num_levels: int = 2,
    num_shared_experts: int = 2,
    num_task_experts: int = 1,
    hidden: Sequence[int] = (64, 32),
    norm: str = "none",
    dropout: float = 0.0,
) -> ProgressiveLayeredExtraction:
    """PLE (CGC with ``num_levels=1``) whose experts are the Linear -> norm -> ReLU -> Dropout layers of ``hidden``
    (any input flattened), split into ``num_levels`` levels; flat ``(B, hidden[-1])`` features."""
    mlp_layers(in_channels, input_size, hidden, norm, dropout)  # checks the settings
    widths = [in_channels * math.prod(input_size), *hidden]

    def level(layers: range) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            expert = nn.Sequential(*(mlp_layer(widths[i], widths[i + 1], norm, dropout) for i in layers))
            return nn.Sequential(nn.Flatten(), *expert) if layers.start == 0 else expert
        return make

    levels = [level(layers) for layers in level_groups(len(hidden), num_levels)]
    return ProgressiveLayeredExtraction(levels, task_names, (in_channels, *input_size), num_shared_experts,
                                        num_task_experts, hidden[-1], 0)
