"""DSelect-k: shared experts mixed per task by a differentiable gate that selects at most k of them.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi, "DSelect-k: Differentiable Selection in the
Mixture of Experts with Applications to Multi-Task Learning", NeurIPS 2021 (arXiv:2106.03760). It is MMoE
(:mod:`mtl_train.backbones.mmoe`) with the softmax gate replaced. With n experts, every expert i gets an m-bit code
b(i) (m = ceil(log2 n), most significant bit first: expert 2 of 4 is ``10``), and a *single-expert selector* with
logits z in R^m puts the weight

    r_i(z) = prod_j ( S(z_j) if b_j(i) = 1 else 1 - S(z_j) )

on expert i, where S is the cubic smooth-step

    S(t) = 0 for t <= -gamma/2,   1 for t >= gamma/2,   -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2 in between.

r sums to one over the 2^m codes, and is one-hot once every S(z_j) is 0 or 1 (which training reaches, since S is
flat outside [-gamma/2, gamma/2]). Task t's gate holds k selectors z^(1..k) and logits alpha in R^k:

    q_t = sum_l softmax(alpha)_l * r(z^(l))        (restricted to the n real experts)

so q_t has at most k nonzero entries at convergence, and ``branch`` returns sum_i q_t,i * expert_i(x).

Gates (``gate``): ``per_example`` (default, as in LibMTL's DSelect_k) computes z = W_z flatten(x) + b_z and
alpha = W_a flatten(x) + b_a per sample; ``static`` holds z and alpha as free per-task parameters (the paper's
task-only gate). Initialisation as in the authors' code: z's weights and biases ~ U(-gamma/100, gamma/100), so
every S(z_j) starts near 1/2 (all experts equally weighted); alpha's weights ~ U(-0.05, 0.05), biases 0.

Penalty (``penalty``, logged as the ``dselect_k`` column of ``losses.csv`` when on). When n is not a power of 2
the 2^m - n unused codes can take weight, so q sums to less than one; the paper then adds 1 / sum_{i<n} r_i(z^(l))
for every selector. Here it is that term minus 1 (same gradient, 0 when no weight is lost), times
``unused_weight`` (1, as in the authors' code). ``entropy_weight`` adds the paper's optional entropy regulariser
sum_l sum_i -r_i log(r_i + 1e-6), which speeds up the selectors' convergence to one-hot (0 by default: LibMTL
computes it from the last task's selectors only and its trainer then discards it, so it has no effect there).
Both are averaged over the batch and summed over tasks. A per-example gate's penalty is recomputed from the last
training batch (kept by :meth:`DSelectK.encode`), since the trainer adds the penalty after the weighting method's
backward has freed the forward's graph. Neither term is on with the defaults (n = 4 experts, no entropy term).

Shared and task parameters as in MMoE: the experts are shared, the gate of task t is ``task_parameters(t)``; z is
the experts' outputs stacked, which every task reads (``weighting.mode=rep`` takes gradients w.r.t. it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.cnn import conv_blocks
from mtl_train.backbones.mlp import mlp_layers
from mtl_train.backbones.mmoe import MixtureOfExperts, checked_num_experts
from mtl_train.errors import ConfigError

GATES = ("per_example", "static")
ENTROPY_EPS = 1e-6


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step S_gamma(t): 0 below -gamma/2, 1 above gamma/2, C^1 in between (Hazimeh et al., eq. 1)."""
    cubic = -2 * t.pow(3) / gamma ** 3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def binary_codes(num_experts: int) -> Tensor:
    """``(2^m, m)`` 0/1 matrix, row i = the m-bit code of i, most significant bit first (m = ceil(log2 n))."""
    bits = math.ceil(math.log2(num_experts)) if num_experts > 1 else 0
    codes = torch.arange(2 ** bits).unsqueeze(1)
    return ((codes >> torch.arange(bits - 1, -1, -1)) & 1).float()


def selector_weights(logits: Tensor, codes: Tensor, gamma: float) -> Tensor:
    """r(z) of every selector: ``(..., m)`` logits to ``(..., 2^m)`` weights, each row summing to one."""
    steps = smooth_step(logits, gamma).unsqueeze(-2)  # (..., 1, m)
    return torch.where(codes.bool(), steps, 1 - steps).prod(dim=-1)


class DSelectKGate(nn.Module):
    """One task's DSelect-k gate: ``forward(flat_x)`` gives ``(B, n)`` expert weights (see the module docstring)."""

    def __init__(self, in_features: int, num_experts: int, num_nonzeros: int, gamma: float, per_example: bool) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.num_nonzeros = num_nonzeros
        self.gamma = gamma
        self.register_buffer("codes", binary_codes(num_experts), persistent=False)
        bits = self.codes.shape[1]
        if per_example:
            self.selector = nn.Linear(in_features, num_nonzeros * bits)
            self.mixture = nn.Linear(in_features, num_nonzeros)
            nn.init.uniform_(self.selector.weight, -gamma / 100, gamma / 100)
            nn.init.uniform_(self.selector.bias, -gamma / 100, gamma / 100)
            nn.init.uniform_(self.mixture.weight, -0.05, 0.05)
            nn.init.zeros_(self.mixture.bias)
        else:
            self.selector_logits = nn.Parameter(torch.empty(num_nonzeros, bits).uniform_(-gamma / 100, gamma / 100))
            self.mixture_logits = nn.Parameter(torch.empty(num_nonzeros).uniform_(-0.05, 0.05))
        self.per_example = per_example

    def logits(self, flat_x: Tensor) -> tuple[Tensor, Tensor]:
        """(z, alpha): ``(B, k, m)`` selector logits and ``(B, k)`` mixture logits."""
        batch = flat_x.shape[0]
        if self.per_example:
            z = self.selector(flat_x).view(batch, self.num_nonzeros, -1)
            return z, self.mixture(flat_x)
        return (self.selector_logits.expand(batch, *self.selector_logits.shape),
                self.mixture_logits.expand(batch, self.num_nonzeros))

    def selectors(self, flat_x: Tensor) -> Tensor:
        """``(B, k, 2^m)``: r(z^(l)) of each of the k selectors, over every code (used or not)."""
        return selector_weights(self.logits(flat_x)[0], self.codes, self.gamma)

    def forward(self, flat_x: Tensor) -> Tensor:
        """q: ``(B, n)``, ``sum_l softmax(alpha)_l r(z^(l))`` on the n real experts."""
        z, alpha = self.logits(flat_x)
        r = selector_weights(z, self.codes, self.gamma)
        return torch.einsum("bk,bkc->bc", torch.softmax(alpha, dim=1), r)[:, :self.num_experts]

    def penalty(self, flat_x: Tensor, unused_weight: float, entropy_weight: float) -> Tensor:
        """``(B,)``: unused_weight * sum_l (1 / sum_{i<n} r_i - 1) + entropy_weight * sum_l sum_i -r_i log(r_i + eps)."""
        r = self.selectors(flat_x)
        lost = (1 / r[..., :self.num_experts].sum(dim=-1) - 1).sum(dim=1)
        entropy = -(r * torch.log(r + ENTROPY_EPS)).sum(dim=(1, 2))
        return unused_weight * lost + entropy_weight * entropy


class DSelectK(MixtureOfExperts):
    """Shared ``experts`` mixed per task by a :class:`DSelectKGate` (see the module docstring)."""

    def __init__(
        self,
        experts: Sequence[nn.Module],
        task_names: Sequence[str],
        input_features: int,
        out_channels: int,
        spatial_dims: int,
        num_nonzeros: int = 2,
        gamma: float = 1.0,
        gate: str = "per_example",
        unused_weight: float = 1.0,
        entropy_weight: float = 0.0,
    ) -> None:
        n = len(experts)
        if not 1 <= num_nonzeros <= n:
            raise ConfigError(f"backbone.num_nonzeros must be between 1 and backbone.num_experts ({n}), "
                              f"got {num_nonzeros}")
        if not gamma > 0:
            raise ConfigError(f"backbone.gamma (the smooth-step's width) must be > 0, got {gamma}")
        if gate not in GATES:
            raise ConfigError(f"backbone.gate must be one of {', '.join(GATES)}, got {gate!r}")
        if not (unused_weight >= 0 and entropy_weight >= 0):
            raise ConfigError(f"backbone.unused_weight and backbone.entropy_weight must be >= 0 (0 turns the term "
                              f"off), got {unused_weight} and {entropy_weight}")
        super().__init__(experts, task_names, input_features, out_channels, spatial_dims)
        self.gates = nn.ModuleDict({  # MMoE's softmax gates, replaced
            task: DSelectKGate(input_features, n, num_nonzeros, gamma, gate == "per_example") for task in task_names
        })
        self.unused_weight = unused_weight if n & (n - 1) else 0.0  # no unused code when n is a power of 2
        self.entropy_weight = entropy_weight
        self.penalty_name = "dselect_k" if self.unused_weight > 0 or entropy_weight > 0 else None
        self._penalty_input: Tensor | None = None

    def gate_weights(self, task: str, x: Tensor) -> Tensor:
        """``task``'s gate q_t(x): ``(B, num_experts)``, at most ``num_nonzeros`` entries nonzero once trained."""
        return self.gates[task](torch.flatten(x, 1))

    def encode(self, x: Tensor) -> Tensor:
        """The experts' outputs stacked, ``(B, num_experts, C, *spatial)``; keeps a training batch for the penalty."""
        if self.training and self.penalty_name is not None:
            self._penalty_input = x.detach()
        return super().encode(x)

    def penalty(self) -> Tensor | None:
        """The unused-code and entropy terms of every task's gate on the last training batch (batch mean), or None
        when both are off."""
        if self.penalty_name is None:
            return None
        if self._penalty_input is None:
            raise RuntimeError("DSelectK.penalty needs a training forward (encode) first")
        flat = torch.flatten(self._penalty_input, 1)
        return sum(gate.penalty(flat, self.unused_weight, self.entropy_weight).mean() for gate in self.gates.values())


def dselect_k_cnn(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    spatial_dims: int,
    num_experts: int = 4,
    num_nonzeros: int = 2,
    gamma: float = 1.0,
    gate: str = "per_example",
    unused_weight: float = 1.0,
    entropy_weight: float = 0.0,
    channels: Sequence[int] = (16, 32, 64),
    kernel_size: int = 3,
    first_stride: int = 1,
) -> DSelectK:
    """DSelect-k over ``num_experts`` CNN experts (the blocks of :func:`~mtl_train.backbones.cnn.hard_cnn`, as MMoE's)."""
    experts = [nn.Sequential(*conv_blocks(in_channels, input_size, spatial_dims, channels, kernel_size, first_stride))
               for _ in range(checked_num_experts(num_experts))]
    return DSelectK(experts, task_names, in_channels * math.prod(input_size), channels[-1], spatial_dims,
                    num_nonzeros, gamma, gate, unused_weight, entropy_weight)


def dselect_k_mlp(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    num_experts: int = 4,
    num_nonzeros: int = 2,
    gamma: float = 1.0,
    gate: str = "per_example",
    unused_weight: float = 1.0,
    entropy_weight: float = 0.0,
    hidden: Sequence[int] = (64, 32),
    norm: str = "none",
    dropout: float = 0.0,
) -> DSelectK:
    """DSelect-k over ``num_experts`` MLP experts (:func:`~mtl_train.backbones.mlp.mlp_layers`), for vector inputs."""
    experts = [nn.Sequential(*mlp_layers(in_channels, input_size, hidden, norm, dropout))
               for _ in range(checked_num_experts(num_experts))]
    return DSelectK(experts, task_names, in_channels * math.prod(input_size), hidden[-1], 0,
                    num_nonzeros, gamma, gate, unused_weight, entropy_weight)
