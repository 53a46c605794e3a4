"""The gradient engine: per-task gradients at (nearly) the cost of one backward pass.

Row t of the per-task gradient matrix G is the gradient of task loss L_t with respect to the shared part of the
model. The engine computes it in two stages, through the shared representation z = ``model.encode(x)``:

1. **Heads** (:func:`representation_gradients`): for every task t, one backward from L_t through task t's own blocks
   and head, stopping at z. It gives row t of G_z = dL/dz and the gradient of L_t with respect to task t's own
   parameters. Task t's backward only visits task t's part of the graph, so the k of them together do the work of
   one backward through all heads; the trunk is not touched.
2. **Trunk** (:class:`TrunkJacobian`, for gradients w.r.t. the shared parameters): the k rows of G_z are
   backpropagated through the trunk, either all at once in one batched backward (``torch.autograd.grad(z, params,
   grad_outputs=G_z, is_grads_batched=True)``, i.e. ``vmap`` over the cotangents) or one at a time (a loop of k
   backwards). Both give the same G up to float rounding.

This relies on the shared parameters acting on the losses only through z, which holds for every backbone here:
``model.decode(z, x)`` reads z, the input and task-specific parameters only. Parameters that a task does not reach
get zero rows. The naive engine, one backward per task from each loss straight to the shared parameters, is kept as
:func:`task_gradient_matrix` (a reference for tests and the benchmark baseline); it re-traverses every head once
per task and gives the same G.

Batched or loop (``weighting.jacobian``)
    ``batched`` always batches, ``loop`` always loops; ``auto`` (default) batches on CUDA and loops elsewhere. On
    the GPU a batched backward launches each kernel once instead of k times, which is where small multi-task models
    spend their time. On the CPU it does not pay: the k cotangents cost k times the arithmetic either way, and
    PyTorch's batching rules for the convolution, pooling and batch-norm backwards add copies (measured here, 2-core
    CPU, k = 4: 1.3-1.5x slower than the loop for MultiLeNet, 1.8x for the 1-D ECG CNN; ``scripts/bench.py`` prints
    the comparison). Under ``auto``, an op without a batching rule makes the batched backward raise; the engine then
    warns once, falls back to the loop and keeps using it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError

JACOBIANS = ("auto", "batched", "loop")

#: Device types on which ``jacobian: auto`` batches the trunk backward.
AUTO_BATCHED_DEVICES = ("cuda",)


def flat_rows(grads: Sequence[Tensor | None], inputs: Sequence[Tensor], rows: int) -> Tensor:
    """``(rows, d)``: the ``(rows, *input.shape)`` gradients of every input (None: not reached, zeros), flattened and
    concatenated."""
    return torch.cat([inputs[i].new_zeros(rows, inputs[i].numel()) if g is None else g.reshape(rows, -1)
                      for i, g in enumerate(grads)], dim=1)


def task_gradient_matrix(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The naive engine: row t = d losses[t] / d params, flattened, one backward per task from the loss.

    Parameters a task does not reach contribute zeros. The graph is kept (``retain_graph``).
    """
    return torch.cat([flat_rows(torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True), params, 1)
                      for t in range(losses.shape[0])])


def representation_gradients(losses: Tensor, z: Tensor, task_parameters: Sequence[Sequence[Tensor]]
                             ) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
    """Stage 1: ``(G_z, own)`` with G_z of shape ``(k, *z.shape)``, row t = d losses[t] / d z, and ``own[t]`` the
    gradients of losses[t] w.r.t. ``task_parameters[t]``; one backward per task, through that task's part of the graph
    only. The graph is kept (``retain_graph``)."""
    rows, own = [], []
    for t, params in enumerate(task_parameters):
        grads = torch.autograd.grad(losses[t], [z, *params], retain_graph=True, materialize_grads=True)
        rows.append(grads[0])
        own.append(grads[1:])
    return torch.stack(rows), own


def add_gradients(params: Sequence[Tensor], grads: Sequence[Tensor], factor: Tensor | None = None) -> None:
    """Add ``grads[i]`` (times ``factor`` when given) to ``params[i].grad``, setting it where there is none yet."""
    for p, g in zip(params, grads):
        if factor is not None:
            g = factor * g
        p.grad = g if p.grad is None else p.grad + g


class TrunkJacobian:
    """Stage 2: backpropagate m cotangents of z to the shared parameters, batched or in a loop (module docstring)."""

    def __init__(self, jacobian: str = "auto") -> None:
        if jacobian not in JACOBIANS:
            raise ConfigError(f"weighting.jacobian must be one of {', '.join(JACOBIANS)}, got {jacobian!r}")
        self.jacobian = jacobian
        self.batching_failed = False  # set once an `auto` batched backward raised; the loop is used from then on

    def batches(self, device: torch.device) -> bool:
        """Whether the next call on ``device`` runs one batched backward (else a loop)."""
        if self.jacobian == "auto":
            return device.type in AUTO_BATCHED_DEVICES and not self.batching_failed
        return self.jacobian == "batched"

    def __call__(self, z: Tensor, params: Sequence[Tensor], cotangents: Tensor) -> Tensor:
        """``(m, d)``: row i = d <cotangents[i], z> / d params, flattened and concatenated over ``params``
        (``cotangents`` has shape ``(m, *z.shape)``). The graph is kept (``retain_graph``)."""
        m = cotangents.shape[0]
        if self.batches(z.device):
            try:
                grads = torch.autograd.grad(z, params, grad_outputs=cotangents, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True)
                return flat_rows(grads, params, m)
            except (RuntimeError, NotImplementedError) as error:
                if self.jacobian != "auto":
                    raise
                warnings.warn(f"the batched per-task backward failed ({type(error).__name__}: {error}); "
                              "computing per-task gradients with one backward per task from now on "
                              "(weighting.jacobian=loop does this directly)", RuntimeWarning, stacklevel=2)
                self.batching_failed = True
        return torch.cat([flat_rows(torch.autograd.grad(z, params, grad_outputs=cotangents[i], retain_graph=True,
                                                        allow_unused=True), params, 1) for i in range(m)])
