"""The base of methods that combine per-task gradients into one update of the shared part of the model.

Each step it builds G, the ``(k, d)`` matrix whose row t is the gradient of task loss t with respect to

* ``mode="params"``: the shared parameters (``model.shared_parameters()``), flattened and concatenated; or
* ``mode="rep"``: the shared representation z (the "-UB" / rep-grad variants, Sener & Koltun, NeurIPS 2018),

with the engine of :mod:`mtl_train.weighting.gradients`: k backwards through the heads only (stopping at z), and in
``params`` mode one batched backward (or k, ``jacobian``) through the trunk. The method's
:meth:`GradientWeighting.aggregate` maps G and the step's detached losses to an update direction d (and the effective
per-task weights, recorded in ``weights.csv``). The shared parameters (``params``) or z (``rep``, then one backward
through the trunk) receive d; every task-specific parameter receives the gradient of its own task's loss, taken in
the same head backwards that gave G. A ``rep`` step therefore costs about one forward and one backward (plus k
small head backwards' overhead); a ``params`` step adds k - 1 trunk backwards, batched into one where that pays.

G is handed to ``aggregate`` in true units and in float32 at least (cast first, then divided by the fp16 loss scale:
:func:`unscale`), so rules that are not scale-invariant (e.g. Nash-MTL) behave the same with and without AMP. Under
torchrun, G is first reduced over the ranks (:meth:`mtl_train.engine.distributed.Distributed.task_gradients`), and
each rank applies its part of d.

``jacobian`` (every gradient method's config): ``auto`` | ``batched`` | ``loop``, how the trunk backwards of
``params`` mode run; see :mod:`mtl_train.weighting.gradients`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting
from mtl_train.weighting.gradients import TrunkJacobian, add_gradients, representation_gradients

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

    def __init__(self, task_names: Sequence[str], mode: str = "params", jacobian: str = "auto",
                 lr: float | None = None) -> None:
        super().__init__(task_names, lr=lr)
        if mode not in MODES:
            raise ConfigError(f"weighting.mode must be 'params' (shared parameters) or 'rep' (shared representation), "
                              f"got {mode!r}")
        self.mode = mode
        self.trunk_jacobian = TrunkJacobian(jacobian)

    @abstractmethod
    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        """Combine the ``(k, d)`` per-task gradients (rows) of the ``(k,)`` detached ``losses`` into one direction."""

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        grads = unscale(self.task_gradients(losses, ctx), ctx.loss_scale)
        grads, own, back_factor = ctx.distributed.task_gradients(grads, per_sample=self.mode == "rep")
        aggregation = self.aggregate(grads, losses.detach())
        self.apply_direction(ctx, aggregation.direction[own] * (ctx.loss_scale * back_factor))
        return aggregation.weights.detach()

    def representation(self, ctx: StepContext) -> Tensor:
        """z, the tensor every task's gradient passes through (``ctx.shared_representation``)."""
        if self.mode == "rep" and not ctx.model.backbone.shares_representation:
            raise ConfigError(
                f"weighting.mode=rep needs a representation every task reads, and backbone "
                f"{type(ctx.model.backbone).__name__} keeps one per task; set weighting.mode=params"
            )
        if ctx.shared_representation is None:
            raise ValueError("gradient methods need StepContext.shared_representation (z = model.encode(x), from "
                             "which the outputs were decoded)")
        return ctx.shared_representation

    def task_gradients(self, losses: Tensor, ctx: StepContext, combine: Tensor | None = None) -> Tensor:
        """G in scaled units: row t = the flattened gradient of ``ctx.scale(losses)[t]`` w.r.t. z (``rep``) or the
        shared parameters (``params``); with ``combine`` (m, k), the m rows ``combine @ G`` instead (m trunk
        backwards instead of k).

        Every task-specific parameter gets the gradient of its own task's (scaled) loss added to ``.grad``.
        """
        z = self.representation(ctx)
        task_parameters = [ctx.model.task_parameters(task) for task in self.task_names]
        rows, own = representation_gradients(ctx.scale(losses), z, task_parameters)
        for params, grads in zip(task_parameters, own):
            add_gradients(params, grads)
        if combine is not None:
            rows = torch.tensordot(combine.to(rows.dtype), rows, dims=1)
        if self.mode == "rep":
            return rows.flatten(1)
        return self.trunk_jacobian(z, ctx.model.shared_parameters(), rows)

    def apply_direction(self, ctx: StepContext, direction: Tensor) -> None:
        """Give the shared part the (scaled) flat ``direction``: the shared parameters' ``.grad`` (``params``), or
        the gradient of z, backpropagated through the trunk (``rep``)."""
        if self.mode == "rep":
            z = ctx.shared_representation
            z.backward(direction.view_as(z).to(z.dtype))
        else:
            assign_flat_gradient(ctx.model.shared_parameters(), direction)


def unscale(grads: Tensor, loss_scale: float) -> Tensor:
    """``grads / loss_scale`` in float32 at least: the division runs after the cast, since an fp16 G divided in fp16
    (e.g. by 65536) would round its small entries to subnormals."""
    return grads.to(torch.promote_types(grads.dtype, torch.float32)) / loss_scale


def assign_flat_gradient(params: Sequence[Tensor], flat: Tensor) -> None:
    """Set ``p.grad`` of every parameter from consecutive slices of the flat vector ``flat``."""
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
