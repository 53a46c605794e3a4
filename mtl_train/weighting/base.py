"""The interface every loss-weighting method implements.

A weighting method turns the per-task losses of one training step into gradients on the model. The trainer,
for every step and whatever the method:

1. computes the shared representation ``z = model.encode(x)``, the outputs ``model.decode(z, x)`` and ``losses``,
   a tensor of shape ``(k,)`` in the order of ``weighting.task_names`` (multiplied by the training schedule's
   per-task factors, see :mod:`mtl_train.schedules`);
2. zeroes the gradients and calls ``weights = weighting.backward(losses, ctx)``: the method must leave
   ``.grad`` set on every model parameter (and on its own parameters, if it has any) and return the ``(k,)``
   weights it applied, detached (methods that combine gradients return the effective weights of the
   combination). ``weights.csv`` records them;
3. unscales (AMP), clips and steps one optimizer holding the model's parameters and the groups from
   :meth:`Weighting.optimizer_groups`;
4. calls :meth:`Weighting.after_optimizer_step`; at the end of every epoch :meth:`Weighting.after_epoch` with
   the epoch's mean training losses; after every validation :meth:`Weighting.after_evaluation` with the
   metrics. All three are no-ops unless a method overrides them.

Everything a method may use is passed in :class:`StepContext`; a method never reaches into the trainer, and the
trainer never branches on which method runs. A method's state lives in parameters and buffers (or in
``get_extra_state``), so ``state_dict()`` checkpoints it.

Gradient scaling (fp16 AMP): a method must call ``ctx.scale(loss).backward()`` (or differentiate
``ctx.scale(loss)``) instead of using ``loss`` directly. Gradients are then in scaled units (``ctx.loss_scale``
times the true ones), and the trainer unscales everything the optimizer holds.

To add a method: one file ``mtl_train/weighting/<name>.py`` with a subclass whose hyperparameters are
``__init__`` arguments, and one ``configs/weighting/<name>.yaml`` whose ``_target_`` points at it. The trainer
injects ``task_names``; nothing else is edited. Methods that combine per-task gradients subclass
:class:`mtl_train.weighting.gradient_based.GradientWeighting` instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtl_train.engine.distributed import Distributed
from mtl_train.model import MultiTaskModel


@dataclass
class StepContext:
    """What a weighting method may use during one training step.

    ``inputs`` is the batch x; ``shared_representation`` is z (the trunk's output, still in the graph); ``outputs`` are the task outputs
    (in the graph); ``class_logits[task]`` says whether a task's output holds class logits along dim 1;
    ``recompute_losses()`` evaluates the (scheduled) task losses again on the same batch with the current
    parameters, without gradients (for methods that compare losses before and after the update, e.g. FAMO). That
    forward computes the training forward's function: the same dropout masks, and BatchNorm normalising with the
    batch's own statistics without updating its running statistics (which thus move once per step), so the two
    losses differ by the parameter update alone. ``distributed``
    reduces per-task gradients over torchrun ranks (:meth:`~mtl_train.engine.distributed.Distributed.task_gradients`;
    the identity in a single process).
    """

    model: MultiTaskModel
    step: int
    scale: Callable[[Tensor], Tensor]
    loss_scale: float = 1.0
    epoch: int = 0
    inputs: Tensor | None = None
    shared_representation: Tensor | None = None
    outputs: dict[str, Tensor] = field(default_factory=dict)
    class_logits: dict[str, bool] = field(default_factory=dict)
    recompute_losses: Callable[[], Tensor] | None = None
    distributed: Distributed = field(default_factory=Distributed)


def share_over_active(scores: Tensor, active: Tensor) -> Tensor:
    """Non-negative ``scores`` of the ``active`` tasks rescaled to sum to 1; 0 for the inactive tasks (and for all
    tasks when the active scores sum to 0). For methods whose weights lie on the simplex."""
    masked = torch.where(active, scores, 0.0)
    total = masked.sum()
    return torch.where(total > 0, masked / torch.where(total > 0, total, 1.0), 0.0)


def normalise_over_active(scores: Tensor, active: Tensor) -> Tensor:
    """Non-negative ``scores`` of the ``active`` tasks rescaled to sum to the number of active tasks, as EW's
    weights do (:func:`share_over_active` times that count); 0 for the inactive tasks (tasks switched off by the
    training schedule, loss exactly 0), and everywhere when the active scores sum to 0."""
    return active.sum() * share_over_active(scores, active)


class Weighting(nn.Module, ABC):
    """Base class of loss-weighting methods (see the module docstring for the contract).

    ``cuda_graph_safe``: whether a step of the method may be recorded once as a CUDA graph and replayed
    (``trainer.cuda_graphs=true``, :mod:`mtl_train.engine.cuda_graphs`). A replay runs the recorded kernels only, so a
    method is safe when its ``backward`` and ``after_optimizer_step`` read no tensor value on the host, ignore
    ``ctx.step``, ``ctx.epoch`` and ``ctx.recompute_losses``, draw random numbers only from the device's global
    generator, and keep all state that changes between steps in its tensors, updated in place (also in
    ``after_epoch`` and ``after_evaluation``). False by default, so a method of one's own runs eagerly until marked
    (a subclass may make it a property decided by its settings, as Nash-MTL does);
    ``tests/weighting/test_cuda_graph_safety.py`` checks every method that is marked.
    """

    cuda_graph_safe: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str], lr: float | None = None) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.lr = lr
        self.keep_gradients = False  # set by the trainer for a step whose G it samples (keeps_gradients)
        self.kept_gradients: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @abstractmethod
    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        """Set gradients from the ``(k,)`` task losses; return the ``(k,)`` weights applied (detached)."""

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the method's own learnable parameters (none by default).

        They are stepped by the trainer's optimizer, with learning rate ``lr`` (the optimizer's own when None)
        and no weight decay.
        """
        params = list(self.parameters())
        if not params:
            return []
        group = {"params": params, "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    def keeps_gradients(self, wrt: str) -> bool:
        """Whether :meth:`backward` builds the full ``(k, d)`` gradient matrix G of the task losses it is given
        w.r.t. ``wrt`` (``"rep"``: z, ``"params"``: the shared parameters) and, when :attr:`keep_gradients` is set,
        leaves it in :attr:`kept_gradients` (in true units), so that the per-run diagnostics
        (:mod:`mtl_train.diagnostics`) reuse it instead of another backward. False by default."""
        return False

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called after every optimizer step (e.g. to renormalise weights). No-op by default."""

    def after_epoch(self, epoch: int, mean_losses: Tensor) -> None:
        """Called at the end of every epoch with the ``(k,)`` mean training losses. No-op by default."""

    def after_evaluation(self, metrics: dict[str, dict[str, float]]) -> None:
        """Called after every validation with ``{task: {metric: value}}``. No-op by default."""


def active_tasks(losses: Tensor) -> Tensor:
    """``(k,)`` bool: the tasks that train in this step. A task whose loss is exactly 0 (switched off by the
    training schedule, see :mod:`mtl_train.schedules`) is inactive: a method gives it weight 0, moves none of its
    own state for it and updates the model from the active tasks alone."""
    return losses.detach() != 0
