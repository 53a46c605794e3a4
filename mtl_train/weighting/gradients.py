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

Chunks (``weighting.jacobian_chunk``)
    A batched backward of c cotangents holds about c times the transient tensors of one backward (the activation
    gradients of the trunk, and the c rows it returns), so for many rows (large k, the 2k rows of MoDo and SDMGrad)
    or a large model, one backward of all m rows can exhaust the GPU. The m rows are therefore backpropagated in
    consecutive chunks of at most c cotangents each, concatenated in order: the same G as one batched backward. An
    integer ``jacobian_chunk`` fixes c. ``null`` (default) picks it: on CUDA, the first batched backward of a given m
    and shape of z backpropagates row 0 alone and measures the memory it takes beyond what was allocated before
    (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, so CUDA's peak statistics restart there,
    once per shape), then takes

        c = min(m, floor(FREE_FRACTION * free / per_row))      (at least 1; :func:`memory_bounded_chunk`)

    with ``free`` the free device memory (``torch.cuda.mem_get_info``) plus the blocks PyTorch's caching allocator
    holds unused, and FREE_FRACTION = 0.5; on other devices c = m (one batched backward of all the rows;
    ``jacobian: auto`` loops there anyway).
    Whatever c is, a batched backward that raises ``torch.OutOfMemoryError`` is retried with half as many
    cotangents (the cache emptied first), down to 1, with one warning; the smaller chunk is kept for the later steps.
    No estimate is made, and no retry tried, while a CUDA graph is being captured.
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

#: Device types on which ``jacobian_chunk: null`` bounds the chunk by the free memory (module docstring).
MEMORY_BOUNDED_DEVICES = ("cuda",)

#: The share of the free device memory that the chunks of ``jacobian_chunk: null`` are sized to fill.
FREE_FRACTION = 0.5


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


def batched_backward(z: Tensor, params: Sequence[Tensor], cotangents: Tensor) -> tuple[Tensor | None, ...]:
    """One batched backward: the ``(c, *param.shape)`` gradients of <cotangents[i], z> for every parameter (None: not
    reached), for the ``(c, *z.shape)`` ``cotangents``. The graph is kept (``retain_graph``)."""
    return torch.autograd.grad(z, params, grad_outputs=cotangents, retain_graph=True, allow_unused=True,
                               is_grads_batched=True)


def memory_bounded_chunk(rows: int, bytes_per_row: int, free_bytes: int, free_fraction: float = FREE_FRACTION
                         ) -> int:
    """The number of cotangents per batched backward: as many of the ``rows`` as fit in ``free_fraction`` of
    ``free_bytes`` at ``bytes_per_row`` each, at least 1 (all of them when a row takes no memory)."""
    if bytes_per_row <= 0:
        return rows
    return max(1, min(rows, int(free_fraction * free_bytes) // bytes_per_row))


def measured_backward(z: Tensor, params: Sequence[Tensor], cotangent: Tensor) -> tuple[Tensor, int]:
    """``(row, bytes)``: the flattened batched backward of the one CUDA cotangent ``(1, *z.shape)``, and the most
    memory it allocated beyond what was allocated before it (CUDA's peak statistics are reset for that)."""
    torch.cuda.reset_peak_memory_stats(z.device)
    before = torch.cuda.memory_allocated(z.device)
    row = flat_rows(batched_backward(z, params, cotangent), params, 1)
    return row, torch.cuda.max_memory_allocated(z.device) - before


def free_memory(device: torch.device) -> int:
    """Bytes new tensors on the CUDA ``device`` can take: its free memory plus the blocks PyTorch's caching allocator
    reserved and holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream (never, off CUDA)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_chunk(chunk: int | None) -> int | None:
    """``chunk`` if it is None or an integer >= 1, else a ConfigError naming ``weighting.jacobian_chunk``."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ConfigError(f"weighting.jacobian_chunk must be null (as many cotangents per batched trunk backward as "
                          f"fit in GPU memory) or an integer >= 1 (at most that many), got {chunk!r}")
    return chunk


class TrunkJacobian:
    """Stage 2: backpropagate m cotangents of z to the shared parameters, batched (in chunks of at most ``chunk``
    cotangents; None: picked, see the module docstring) or in a loop."""

    def __init__(self, jacobian: str = "auto", chunk: int | None = None) -> None:
        if jacobian not in JACOBIANS:
            raise ConfigError(f"weighting.jacobian must be one of {', '.join(JACOBIANS)}, got {jacobian!r}")
        self.jacobian = jacobian
        self.chunk = check_chunk(chunk)
        self.batching_failed = False  # set once an `auto` batched backward raised; the loop is used from then on
        self.planned: dict[tuple[int, ...], int] = {}  # chunk picked under `chunk=None`, by (m, *z.shape)
        self.chunk_limit: int | None = None  # set when a batched backward ran out of memory: the chunk that followed

    def batches(self, device: torch.device) -> bool:
        """Whether the next call on ``device`` runs batched backwards (else a loop)."""
        if self.jacobian == "auto":
            return device.type in AUTO_BATCHED_DEVICES and not self.batching_failed
        return self.jacobian == "batched"

    def __call__(self, z: Tensor, params: Sequence[Tensor], cotangents: Tensor) -> Tensor:
        """``(m, d)``: row i = d <cotangents[i], z> / d params, flattened and concatenated over ``params``
        (``cotangents`` has shape ``(m, *z.shape)``). The graph is kept (``retain_graph``)."""
        m = cotangents.shape[0]
        if self.batches(z.device):
            try:
                return self.batched(z, params, cotangents)
            except (RuntimeError, NotImplementedError) as error:
                if self.jacobian != "auto":
                    raise
                warnings.warn(f"the batched per-task backward failed ({type(error).__name__}: {error}); "
                              "computing per-task gradients with one backward per task from now on "
                              "(weighting.jacobian=loop does this directly)", RuntimeWarning, stacklevel=2)
                self.batching_failed = True
        return torch.cat([flat_rows(torch.autograd.grad(z, params, grad_outputs=cotangents[i], retain_graph=True,
                                                        allow_unused=True), params, 1) for i in range(m)])

    def batched(self, z: Tensor, params: Sequence[Tensor], cotangents: Tensor) -> Tensor:
        """The rows of :meth:`__call__` from batched backwards of consecutive chunks of ``cotangents``, halving the
        chunk when one runs out of memory."""
        m = cotangents.shape[0]
        key = (m, *z.shape)
        parts = []
        if self.chunk is None and key not in self.planned and m > 1 and z.device.type in MEMORY_BOUNDED_DEVICES \
                and not capturing(z.device):
            row, bytes_per_row = measured_backward(z, params, cotangents[:1])
            parts.append(row)
            self.planned[key] = memory_bounded_chunk(m, bytes_per_row, free_memory(z.device))
        chunk = self.chunk_size(key)
        start = len(parts)
        while start < m:
            size = min(chunk, m - start)
            grads = self.try_batched_backward(z, params, cotangents[start:start + size])
            if grads is None:
                chunk = self.halve_chunk(size, z.device)
                continue
            parts.append(flat_rows(grads, params, size))
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def chunk_size(self, key: tuple[int, ...]) -> int:
        """The cotangents per batched backward for ``key`` = (m, *z.shape): ``chunk``, else the one picked for the key
        (else m), at most m and at most :attr:`chunk_limit`."""
        m = key[0]
        chunk = self.planned.get(key, m) if self.chunk is None else self.chunk
        if self.chunk_limit is not None:
            chunk = min(chunk, self.chunk_limit)
        return min(chunk, m)

    @staticmethod
    def try_batched_backward(z: Tensor, params: Sequence[Tensor], cotangents: Tensor
                             ) -> tuple[Tensor | None, ...] | None:
        """:func:`batched_backward`, or None when it ran out of memory and fewer cotangents are left to try (more
        than one, and no CUDA graph being captured); else its error is raised."""
        try:
            return batched_backward(z, params, cotangents)
        except torch.OutOfMemoryError:
            if cotangents.shape[0] == 1 or capturing(z.device):
                raise
        return None  # outside the except block, so the error's frames (and the tensors they hold) are released

    def halve_chunk(self, size: int, device: torch.device) -> int:
        """After a batched backward of ``size`` cotangents ran out of memory: the chunk to retry with (half), kept for
        later calls; the CUDA cache is emptied, and the first time, a warning says so."""
        if self.chunk_limit is None:
            warnings.warn(f"a batched per-task backward of {size} cotangents ran out of GPU memory; retrying with "
                          f"{size // 2} per backward (halving again while needed) and keeping that size from now on "
                          f"(weighting.jacobian_chunk sets it)", RuntimeWarning, stacklevel=4)
        self.chunk_limit = size // 2
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return self.chunk_limit
