"""The base of methods that combine per-task gradients into one update of the shared part of the model.

Each step it builds G, the ``(k, d)`` matrix whose row t is the gradient of task loss t with respect to

* ``mode="params"``: the shared parameters (``model.shared_parameters()``), flattened and concatenated; or
* ``mode="rep"``: the shared representation z (the "-UB" / rep-grad variants, Sener & Koltun, NeurIPS 2018),
  which needs k backward passes through the heads only and one through the trunk.

The method's :meth:`GradientWeighting.aggregate` maps G to an update direction d (and the effective per-task
weights, recorded in ``weights.csv``). The shared parameters (``params``) or z (``rep``, then backpropagated
through the trunk) receive d; every task-specific parameter receives the gradient of its own task's loss.

G is handed to ``aggregate`` in true units (divided by the fp16 loss scale), so rules that are not
scale-invariant (e.g. Nash-MTL) behave the same with and without AMP.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting
from mtl_train.weighting.gradients import task_gradient_matrix

MODES = ("params", "rep")


@dataclass
class Aggregation:
    """An update ``direction`` of shape ``(d,)`` and the ``(k,)`` per-task ``weights`` it corresponds to
    (``direction = weights @ G`` for methods that combine the rows of G linearly)."""

    direction: Tensor
    weights: Tensor


def weighted_sum(grads: Tensor, weights: Tensor) -> Aggregation:
    """The aggregation ``direction = weights @ grads``."""
    return Aggregation(weights @ grads, weights)


class GradientWeighting(Weighting):
    """Base class of gradient-combination methods; subclasses implement :meth:`aggregate`."""

    def __init__(self, task_names: Sequence[str], mode: str = "params", lr: float | None = None) -> None:
        super().__init__(task_names, lr=lr)
        if mode not in MODES:
            raise ConfigError(f"weighting.mode must be 'params' (shared parameters) or 'rep' (shared representation), "
                              f"got {mode!r}")
        self.mode = mode

    @abstractmethod
    def aggregate(self, grads: Tensor) -> Aggregation:
        """Combine the ``(k, d)`` per-task gradients (rows) into one direction."""

    def shared_tensors(self, ctx: StepContext) -> list[Tensor]:
        """What G is taken with respect to: ``[z]`` (``rep``) or the shared parameters (``params``)."""
        if self.mode == "params":
            return ctx.model.shared_parameters()
        if not ctx.model.backbone.shares_representation:
            raise ConfigError(
                f"weighting.mode=rep needs a representation every task reads, and backbone "
                f"{type(ctx.model.backbone).__name__} keeps one per task; set weighting.mode=params"
            )
        return [ctx.shared_representation]

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        shared = self.shared_tensors(ctx)
        grads = task_gradient_matrix(ctx.scale(losses), shared) / ctx.loss_scale
        grads, own, back_factor = ctx.distributed.task_gradients(grads, per_sample=self.mode == "rep")
        aggregation = self.aggregate(grads.float())
        direction = aggregation.direction[own] * (ctx.loss_scale * back_factor)
        self.apply_direction(losses, ctx, shared, direction.to(grads.dtype))
        return aggregation.weights.detach()

    def apply_direction(self, losses: Tensor, ctx: StepContext, shared: list[Tensor], direction: Tensor) -> None:
        """Give the shared part the (scaled) flat ``direction`` and every task-specific parameter the gradient of its
        own task's loss."""
        task_params = [p for task in self.task_names for p in ctx.model.task_parameters(task)]
        torch.autograd.backward(ctx.scale(losses.sum()), inputs=task_params, retain_graph=self.mode == "rep")
        if self.mode == "rep":
            shared[0].backward(direction.view_as(shared[0]))
        else:
            assign_flat_gradient(shared, direction)


def assign_flat_gradient(params: Sequence[Tensor], flat: Tensor) -> None:
    """Set ``p.grad`` of every parameter from consecutive slices of the flat vector ``flat``."""
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
