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
``params`` mode run; ``jacobian_chunk``: null | an integer >= 1, the most cotangents per batched trunk backward
(null: as many as fit in GPU memory); see :mod:`mtl_train.weighting.gradients`.

``weight_ema`` (every gradient method's config; 0 = off, the default): CR-MOGM, Zhou, Zhang, Jiang, Zhong, Gu & Zhu,
"On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022. Weights computed
from the same noisy mini-batch gradients they then combine can keep a stochastic method from converging; the fix
replaces the method's weights w^_t by their exponential moving average over steps,

    w_t = a w_{t-1} + (1 - a) w^_t        (a = ``weight_ema``; w_0 = w^_1, so the first step is the method's own),

and the update by d = w_t @ G_t. For a method whose update is not w^_t @ G_t (DB-MTL combines its EMA gradients,
GradDrop masks coordinates), the change of weights is applied along this step's gradients: d = d^_t +
(w_t - w^_t) @ G_t, which is the same thing wherever d^_t = w^_t @ G_t. The average runs per task: a task inactive
in a step (loss exactly 0) gets weight 0 and its average does not move; a task's average starts at its first
active step. ``a`` is constant, torchjd's choice for ``CRMOGMWeighting`` (default 0.9 there); the paper's analysis
lets it grow towards 1 as the learning rate decays. The state (``ema_weights``, ``ema_started``) is in
``state_dict()``, so a resumed run continues the average exactly. Every subclass takes ``weight_ema`` in its
``__init__`` and passes it on; a subclass that overrides
:meth:`GradientWeighting.backward` applies it by ending with :meth:`GradientWeighting.apply_aggregation`, or, when it
combines the rows itself, by passing its weights through :meth:`GradientWeighting.smoothed_weights` first. A step
that reaches :meth:`GradientWeighting.apply_direction` without either raises a ConfigError naming the key, so the
option is never ignored silently.

Independent sub-batches (:class:`SubBatchGradientWeighting`, for MoDo and SDMGrad): rules that need unbiased
estimates of G G^T take the product of the gradient matrices of two disjoint parts of the batch, whose noise is
independent (:meth:`GradientWeighting.sub_batch_gradients`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_train.backbones.base import Backbone
from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks
from mtl_train.weighting.gradients import TrunkJacobian, add_gradients, representation_gradients

MODES = ("params", "rep")
#: ``sampling`` of :class:`SubBatchGradientWeighting`: the number of parts the batch is split into.
SAMPLINGS = {"three": 3, "two": 2, "one": 1}
#: How the update combines the parts' gradient matrices: the third alone, or the mean of the two.
UPDATE_PARTS = {3: (0.0, 0.0, 1.0), 2: (0.5, 0.5)}


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
                 jacobian_chunk: int | None = None, lr: float | None = None, weight_ema: float = 0.0) -> None:
        super().__init__(task_names, lr=lr)
        if mode not in MODES:
            raise ConfigError(f"weighting.mode must be 'params' (shared parameters) or 'rep' (shared representation), "
                              f"got {mode!r}")
        self.mode = mode
        self.trunk_jacobian = TrunkJacobian(jacobian, jacobian_chunk)
        self.set_weight_ema(weight_ema)

    def set_weight_ema(self, weight_ema: float) -> None:
        """Set the EMA rate of the weights (0 = off); a positive rate creates the state buffers (module docstring)."""
        if isinstance(weight_ema, bool) or not isinstance(weight_ema, (int, float)) or not 0 <= weight_ema <= 1:
            raise ConfigError(f"weighting.weight_ema must be a number in [0, 1] (0 = off; CR-MOGM's EMA rate of the "
                              f"weights, e.g. 0.9), got {weight_ema!r}")
        self.weight_ema = float(weight_ema)
        self.weights_smoothed = False  # set by smoothed_weights, checked and reset by apply_direction
        if self.weight_ema > 0 and "ema_weights" not in self._buffers:
            self.register_buffer("ema_weights", torch.zeros(self.num_tasks, dtype=torch.float64))
            self.register_buffer("ema_started", torch.zeros(self.num_tasks, dtype=torch.bool))

    @abstractmethod
    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        """Combine the ``(k, d)`` per-task gradients (rows) of the ``(k,)`` detached ``losses`` into one direction."""

    def keeps_gradients(self, wrt: str) -> bool:
        """G is built in the method's ``mode`` (by :meth:`backward`, which keeps it when asked). A subclass whose
        backward does not pass G of the given losses through :meth:`GradientWeighting.backward` every step returns
        False (or narrows it)."""
        return self.mode == wrt

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        grads = unscale(self.task_gradients(losses, ctx), ctx.loss_scale)
        grads, own, back_factor = ctx.distributed.task_gradients(grads, per_sample=self.mode == "rep")
        self.keep(grads)
        return self.apply_aggregation(ctx, self.aggregate(grads, losses.detach()), grads, losses, own, back_factor)

    def keep(self, grads: Tensor) -> None:
        """Keep G (true units) for the diagnostics when :attr:`keep_gradients` is set (no copy: G is not changed)."""
        if self.keep_gradients:
            self.kept_gradients = grads.detach()

    def apply_aggregation(self, ctx: StepContext, aggregation: Aggregation, rows: Tensor, losses: Tensor,
                          own: slice, back_factor: float) -> Tensor:
        """The end of every step: the weight EMA (when on) on ``aggregation`` of the ``(k, d)`` gradients ``rows``
        (in true units, reduced over ranks), then this rank's columns ``own`` of the direction to the shared part
        (times ``back_factor``, see :meth:`~mtl_train.engine.distributed.Distributed.task_gradients`); returns the
        weights."""
        aggregation = self.smoothed(aggregation, rows, active_tasks(losses))
        self.apply_direction(ctx, aggregation.direction[own] * (ctx.loss_scale * back_factor))
        return aggregation.weights.detach()

    def smoothed(self, aggregation: Aggregation, rows: Tensor, active: Tensor) -> Aggregation:
        """``aggregation`` with its weights replaced by their EMA over steps (:meth:`smoothed_weights`) and the
        direction moved by the change of weights along ``rows`` (module docstring); unchanged when ``weight_ema``
        is 0."""
        if self.weight_ema == 0:
            return aggregation
        weights = self.smoothed_weights(aggregation.weights, active)
        change = (weights - aggregation.weights.detach()).to(rows.dtype)
        return Aggregation(aggregation.direction + change @ rows, weights)

    def smoothed_weights(self, fresh: Tensor, active: Tensor) -> Tensor:
        """The EMA of this step's ``fresh`` weights (``(k,)``; returned in their dtype), the state moved on; ``fresh``
        itself when ``weight_ema`` is 0. The inactive tasks (not ``active``) get weight 0 and keep their average.
        For methods that combine the rows themselves (e.g. through ``task_gradients(..., combine=weights)``)."""
        if self.weight_ema == 0:
            return fresh
        current = fresh.detach().to(torch.float64)
        previous = torch.where(self.ema_started, self.ema_weights, current)
        weights = torch.where(active, self.weight_ema * previous + (1.0 - self.weight_ema) * current, 0.0)
        self.ema_weights.copy_(torch.where(active, weights, self.ema_weights))
        self.ema_started.logical_or_(active)
        self.weights_smoothed = True
        return weights.to(fresh.dtype)

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
        rows = self.representation_rows(losses, ctx)
        if combine is not None:
            rows = torch.tensordot(combine.to(rows.dtype), rows, dims=1)
        return self.shared_gradients(rows, ctx)

    def representation_rows(self, losses: Tensor, ctx: StepContext) -> Tensor:
        """``(k, *z.shape)`` in scaled units: row t = d ``ctx.scale(losses)[t]`` / dz (one backward per task through
        its own part of the graph); every task-specific parameter gets its own task's gradient added to ``.grad``."""
        z = self.representation(ctx)
        task_parameters = [ctx.model.task_parameters(task) for task in self.task_names]
        rows, own = representation_gradients(ctx.scale(losses), z, task_parameters)
        for params, grads in zip(task_parameters, own):
            add_gradients(params, grads)
        return rows

    def shared_gradients(self, rows: Tensor, ctx: StepContext) -> Tensor:
        """``(m, d)``: the m cotangents ``rows`` of z (``(m, *z.shape)``) flattened (``rep``), or backpropagated
        through the trunk to the shared parameters (``params``)."""
        if self.mode == "rep":
            return rows.flatten(1)
        return self.trunk_jacobian(ctx.shared_representation, ctx.model.shared_parameters(), rows)

    def sub_batch_gradients(self, rows: Tensor, ctx: StepContext, parts: int) -> tuple[Tensor, list[Tensor]]:
        """The gradient matrices of the first two of ``parts`` disjoint parts of the batch, from the
        ``(k, *z.shape)`` cotangents ``rows`` (:meth:`representation_rows`), in the units of ``rows``.

        The batch's B samples (along :func:`sample_axis` of z) are cut into ``parts`` consecutive blocks of
        n = B // parts samples (the B mod parts samples left over are in none). Part p's matrix is ``parts`` times
        the gradient of the losses' terms of its samples: for losses that are means over the batch, the gradient of
        the mean over the part, an estimate of G whose noise is independent of the other parts'. Returns
        ``(estimates, masks)``:

        * ``estimates`` ``(2, k, w)``: parts 1 and 2. ``params``: w = d, the gradients w.r.t. the shared parameters
          (one trunk backward of 2k rows). ``rep``: w = n * the width of one sample's z, the part's own samples
          only, so that sample i of one part meets sample i of the other in an inner product;
        * ``masks``: every part's samples, a boolean tensor broadcastable to ``rows``.
        """
        axis = 1 + (0 if self.mode == "rep" else sample_axis(ctx.model.backbone))
        size = rows.shape[axis] // parts
        samples = torch.arange(rows.shape[axis], device=rows.device)
        shape = [1] * rows.dim()
        shape[axis] = -1
        masks = [(samples // size == p).view(shape) for p in range(parts)]
        if self.mode == "rep":
            return parts * torch.stack([rows.narrow(axis, p * size, size).flatten(1) for p in range(2)]), masks
        cotangents = torch.stack([torch.where(mask, rows, 0.0) for mask in masks[:2]])
        return parts * self.shared_gradients(cotangents.flatten(0, 1), ctx).view(2, rows.shape[0], -1), masks

    def apply_direction(self, ctx: StepContext, direction: Tensor) -> None:
        """Give the shared part the (scaled) flat ``direction``: the shared parameters' ``.grad`` (``params``), or
        the gradient of z, backpropagated through the trunk (``rep``)."""
        if self.weight_ema > 0 and not self.weights_smoothed:
            raise ConfigError(f"weighting.weight_ema is not applied by {type(self).__name__} in this step "
                              f"(mode={self.mode}); set weighting.weight_ema=0")
        self.weights_smoothed = False
        if self.mode == "rep":
            z = ctx.shared_representation
            z.backward(direction.view_as(z).to(z.dtype))
        else:
            assign_flat_gradient(ctx.model.shared_parameters(), direction)


class SubBatchGradientWeighting(GradientWeighting):
    """Base of methods whose weights need an unbiased estimate of G G^T: from two independent gradient matrices
    G_1, G_2 of the same expectation, E[G_1 G_2^T] is the product of the expected gradients, while G G^T of one
    batch adds the noise's covariance. The papers draw independent mini-batches (a third for the update); here the
    step's batch is cut into parts (:meth:`GradientWeighting.sub_batch_gradients`), per ``sampling``:

    * ``three``: three parts; the weights come from A = G_1 G_2^T, the update is weights @ G_3 (three independent
      samples, as in the papers' algorithms; LibMTL draws three batches per step for these methods, so its set-up of
      three batches of B corresponds to ``trainer.batch_size`` = 3B here);
    * ``two``: two parts; A = G_1 G_2^T, the update is weights @ (G_1 + G_2) / 2, the gradient of the whole batch
      (when B is even);
    * ``one``: no split; A = G G^T and the update is weights @ G (biased, but every sample of the batch moves the
      shared part).

    Cost in ``mode=params``: the trunk backwards of 2k rows (G_1, G_2), then one of the weighted update (``three``,
    ``two``), against k rows for ``one`` and most other methods. A batch with fewer samples than parts (a short last
    batch) is taken as one. Subclasses implement :meth:`cross_weights` (which may update their state);
    :meth:`aggregate`, given one matrix G, is ``one``.
    """

    def __init__(self, task_names: Sequence[str], sampling: str = "three", mode: str = "params",
                 jacobian: str = "auto", jacobian_chunk: int | None = None, lr: float | None = None,
                 weight_ema: float = 0.0) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, lr=lr,
                         weight_ema=weight_ema)
        if sampling not in SAMPLINGS:
            raise ConfigError(f"weighting.sampling must be one of {', '.join(SAMPLINGS)} (parts of the batch: two "
                              f"for the weights, one for the update | two, both for the update | no split), "
                              f"got {sampling!r}")
        self.sampling = sampling

    def keeps_gradients(self, wrt: str) -> bool:
        """Only ``sampling=one`` builds G of the whole batch."""
        return self.sampling == "one" and super().keeps_gradients(wrt)

    @abstractmethod
    def cross_weights(self, cross: Tensor, active: Tensor) -> Tensor:
        """The ``(k,)`` weights from A = G_1 G_2^T (``cross``, (k, k)), 0 for the tasks not ``active``."""

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        """The rule on one gradient matrix G (``sampling=one``): A = G G^T, direction weights @ G."""
        weights = self.cross_weights(grads @ grads.T, active_tasks(losses))
        return weighted_sum(grads, weights.to(grads.dtype))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        rows = self.representation_rows(losses, ctx)
        parts = SAMPLINGS[self.sampling]
        axis = 1 + (0 if self.mode == "rep" else sample_axis(ctx.model.backbone))
        if rows.shape[axis] < parts:
            parts = 1
        per_sample = self.mode == "rep"
        if parts == 1:
            grads = unscale(self.shared_gradients(rows, ctx), ctx.loss_scale)
            grads, own, back_factor = ctx.distributed.task_gradients(grads, per_sample=per_sample)
            self.keep(grads)
            return self.apply_aggregation(ctx, self.aggregate(grads, losses.detach()), grads, losses, own,
                                          back_factor)
        estimates, masks = self.sub_batch_gradients(rows, ctx, parts)
        estimates, _, _ = ctx.distributed.task_gradients(unscale(estimates, ctx.loss_scale).flatten(0, 1),
                                                         per_sample=per_sample)
        first, second = estimates.view(2, self.num_tasks, -1)
        active = active_tasks(losses)
        weights = self.smoothed_weights(self.cross_weights(first @ second.T, active), active)
        # weights @ the update's parts (their matrices are `parts` times their rows), one more backward
        samples = sum(factor * parts * mask.to(rows.dtype) for factor, mask in zip(UPDATE_PARTS[parts], masks))
        cotangent = samples[0] * torch.tensordot(weights.to(rows.dtype), rows, dims=1)  # masks lead with a task axis
        direction = unscale(self.shared_gradients(cotangent.unsqueeze(0), ctx), ctx.loss_scale)
        direction, own, back_factor = ctx.distributed.task_gradients(direction, per_sample=per_sample)
        self.apply_direction(ctx, direction[0, own] * (ctx.loss_scale * back_factor))
        return weights.to(direction.dtype).detach()


def sample_axis(backbone: Backbone) -> int:
    """The axis of z = ``backbone.encode(x)`` that runs over the batch's samples: 0 where every task reads z (batch
    first, e.g. ``(B, C, *spatial)`` or MMoE's ``(B, n, C, *spatial)``), 1 for the per-task stacks ``(k, B, ...)`` of
    backbones that keep one representation per task (soft sharing, cross-stitch, MTAN)."""
    return 0 if backbone.shares_representation else 1


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
