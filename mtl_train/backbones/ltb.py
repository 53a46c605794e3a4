"""Learning to Branch (LTB): k CNN towers whose blocks pick, by Gumbel-softmax sampling, which tower feeds them.

Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020 (arXiv:2006.01895). The network is a
tree-structured design space: every level has one node per task ("slot") and every node chooses its parent among
the previous level's nodes; slots that choose the same parent share it, so the learned choices decide where the
tasks branch apart. Here a node is one Conv -> BatchNorm -> ReLU -> MaxPool(2) block of
:func:`mtl_train.backbones.cnn.hard_cnn`, so there are k towers of ``len(channels)`` blocks:

    level 0:       h_t^0 = block_t^0(x)                                   (every slot reads the input)
    level l >= 1:  h_t^l = block_t^l( sum_j A^l_tj h_j^(l-1) ),   A^l_t = GumbelSoftmax(alpha^l_t, tau), hard

Slot t's parent choice at level l is a categorical variable with learned logits alpha^l_t in R^k (initialised to 0,
a uniform choice); a training forward draws it with the straight-through Gumbel-softmax estimator (Jang, Gu &
Poole, ICLR 2017): the forward uses the one-hot sample, the backward the gradient of the relaxed softmax at
temperature tau. Task t's head reads slot t of the last level. In eval mode each slot takes its most likely
parent (argmax alpha, the paper's final tree; LibMTL keeps sampling at evaluation), which :meth:`LearningToBranch.tree`
reports.

Schedule. The first ``warmup_steps`` training forwards feed every slot the sum of all parents (A = all ones, as
LibMTL's warm-up), training every block before the choices are learned. From training forward n on (counted by
the ``forwards`` buffer, checkpointed with the model; only forwards with gradients count, so FAMO's re-evaluation
does not, and it redraws the same sample from the same random state) tau_n = ``temperature`` / sqrt(1 + n /
``anneal_steps``): LibMTL's per-epoch tau_e = tau_0 / sqrt(e + 1) when ``anneal_steps`` is an epoch's steps,
continuous in n. The samples come from the global torch generator, seeded by ``seed`` and checkpointed, so a run
resumes exactly. (With hard samples tau changes the gradient of alpha only, never which parent is drawn.)

Left out: the paper's design spaces whose levels have other widths than k nodes, and its final re-training of the
derived tree as a fixed network; the blocks are this project's CNN blocks, not a ResNet's stages.

Shared and task parameters. Slot t's last block, and its parent logits alpha^L_t at the last level, serve task t only:
they are ``task_parameters(t)``. Everything below (every tower's other blocks, the logits of the other levels) can
reach any task, and is shared. z is the level below the last, every slot's features stacked ``(B, k, C, *spatial)``;
every task may read any of them, so ``weighting.mode=rep`` takes gradients w.r.t. z. GradNorm's W is every tower's
convolution of the level below the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone, last_weighted_layer
from mtl_train.backbones.cnn import conv_blocks
from mtl_train.errors import ConfigError


def straight_through_gumbel(logits: Tensor, tau: Tensor) -> Tensor:
    """A one-hot sample of softmax(logits) whose gradient is that of softmax((logits + g) / tau), g ~ Gumbel(0, 1)."""
    gumbel = -torch.empty_like(logits).exponential_().log()
    soft = torch.softmax((logits + gumbel) / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class LearningToBranch(Backbone):
    """k towers of conv blocks, each block's input the sampled parent among the previous level's blocks (module
    docstring)."""

    def __init__(
        self,
        task_names: Sequence[str],
        in_channels: int,
        input_size: Sequence[int],
        spatial_dims: int,
        channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        first_stride: int = 1,
        temperature: float = 5.0,
        anneal_steps: int = 100,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ConfigError(f"backbone.channels must list at least 2 block widths (branching starts at the second "
                              f"block), got {list(channels)}")
        if not (temperature > 0 and anneal_steps >= 1 and warmup_steps >= 0):
            raise ConfigError(f"backbone.temperature must be > 0, backbone.anneal_steps >= 1 and backbone.warmup_steps "
                              f">= 0, got {temperature}, {anneal_steps} and {warmup_steps}")
        self.task_names = list(task_names)
        self.out_channels = channels[-1]
        self.spatial_dims = spatial_dims
        self.temperature = float(temperature)
        self.anneal_steps = anneal_steps
        self.warmup_steps = warmup_steps
        k = len(self.task_names)
        self.towers = nn.ModuleList(
            nn.Sequential(*conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride))
            for _ in self.task_names
        )
        self.logits = nn.ModuleList(  # logits[l - 1][t] = alpha^l_t, slot t's parent logits at level l >= 1
            nn.ParameterList(nn.Parameter(torch.zeros(k)) for _ in self.task_names) for _ in range(len(channels) - 1))
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))

    def parents(self, level: int, slot: int) -> Tensor:
        """A^level_slot, ``(k,)``: all ones during warm-up, a straight-through Gumbel-softmax sample in training, the
        one-hot argmax in eval mode."""
        logits = self.logits[level - 1][slot]
        if not self.training:
            return torch.zeros_like(logits).scatter_(0, logits.argmax().view(1), 1.0)
        step, tau = self.schedule()
        sample = straight_through_gumbel(logits, tau)
        return torch.where(step < self.warmup_steps, torch.ones_like(sample), sample)

    def schedule(self) -> tuple[Tensor, Tensor]:
        """(n, tau_n): the index of the current training forward (``encode`` has counted it) and its temperature,
        as tensors (no host synchronisation)."""
        step = (self.forwards - 1).clamp(min=0)
        return step, self.temperature / torch.sqrt(1 + step / self.anneal_steps)

    def level(self, index: int, h: Tensor) -> list[Tensor]:
        """Level ``index`` >= 1 of every slot, from the previous level's stacked ``(B, k, C, *spatial)`` features."""
        return [tower[index](torch.einsum("j,bj...->b...", self.parents(index, t), h))
                for t, tower in enumerate(self.towers)]

    def encode(self, x: Tensor) -> Tensor:
        """Every slot's features at the level below the last, stacked: ``(B, k, C, *spatial)``."""
        if self.training and torch.is_grad_enabled():
            self.forwards += 1
        h = torch.stack([tower[0](x) for tower in self.towers], dim=1)
        for index in range(1, len(self.towers[0]) - 1):
            h = torch.stack(self.level(index, h), dim=1)
        return h

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """Slot ``task``'s last block on its sampled parent among z's slots."""
        slot, last = self.task_names.index(task), len(self.towers[0]) - 1
        return self.towers[slot][last](torch.einsum("j,bj...->b...", self.parents(last, slot), z))

    def tree(self) -> list[list[int]]:
        """The most likely parent of every slot at every level >= 1 (argmax of its logits): ``tree()[l - 1][t]``."""
        return [[int(alpha.argmax()) for alpha in level] for level in self.logits]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Slot ``task``'s last block and its parent logits at the last level."""
        slot = self.task_names.index(task)
        return [*self.towers[slot][-1].parameters(), self.logits[-1][slot]]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every tower's blocks below the last, and the parent logits of the levels below the last."""
        return [*(p for tower in self.towers for p in tower[:-1].parameters()), *self.logits[:-1].parameters()]

    def last_shared_layer(self) -> nn.Module:
        """Every tower's convolution of the level below the last."""
        return nn.ModuleList(last_weighted_layer(tower[-2]) for tower in self.towers)
