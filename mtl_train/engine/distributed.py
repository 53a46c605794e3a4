"""Data-parallel training over processes started by ``torchrun`` (gloo on CPU, nccl on GPUs).

Every rank holds a full model replica and takes a slice of each global batch (``trainer.batch_size`` is the global
batch, as in a single-process run). The trainer keeps replicas identical without a DDP wrapper, so gradient
methods can reduce what they need themselves:

* the task losses are replaced by their global batch mean *in value* while keeping the local gradient (scaled by
  the rank's share of the batch): every weighting method sees the same loss values on every rank
  (:meth:`Distributed.global_losses`);
* per-task gradient matrices are reduced before a method aggregates them (:meth:`Distributed.task_gradients`):
  averaged over ranks for parameters, concatenated over ranks' samples for the shared representation;
* the gradients of all parameters are averaged once per step (:meth:`Distributed.average_gradients`), and metric
  statistics (sums and counts) are added over ranks after an evaluation (:meth:`Distributed.sum_metric_state`).

Rank 0 alone writes files. A single process is ``Distributed(rank=0, world_size=1)``, for which every method is
the identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mtl_train.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index: Tensor) -> tuple[Tensor, float]:
        """This rank's rows of a global batch ``index`` and the factor ``world_size * rows / len(index)`` that
        makes the average over ranks of its mean loss's gradient the global batch mean's gradient."""
        if not self.enabled:
            return index, 1.0
        rows = index[self.rank::self.world_size]
        return rows, self.world_size * len(rows) / len(index)

    def global_losses(self, losses: Tensor, share: float) -> Tensor:
        """Losses whose value is the global batch mean and whose gradient is ``share`` times the local one."""
        if not self.enabled:
            return losses
        mean = losses.detach() * share
        dist.all_reduce(mean)
        mean /= self.world_size
        return losses * share + (mean - losses.detach() * share)

    def task_gradients(self, grads: Tensor, per_sample: bool) -> tuple[Tensor, slice, float]:
        """The global ``(k, d)`` task gradients from this rank's (computed from :meth:`global_losses`), which columns
        of them are this rank's, and the factor to multiply this rank's part of a direction by before backpropagating
        it (so that :meth:`average_gradients` then gives the global gradient).

        Gradients w.r.t. parameters (``per_sample=False``) are averaged; gradients w.r.t. the shared representation
        (``per_sample=True``, one column block per sample) are concatenated over ranks, zero-padded to the largest
        rank's width (zero columns change no Gramian, projection or norm)."""
        if not self.enabled:
            return grads, slice(0, grads.shape[1]), 1.0
        if not per_sample:
            grads = grads.clone()
            dist.all_reduce(grads)
            return grads / self.world_size, slice(0, grads.shape[1]), 1.0
        width = torch.tensor([grads.shape[1]], device=grads.device)
        widths = [torch.zeros_like(width) for _ in range(self.world_size)]
        dist.all_gather(widths, width)
        widths = [int(w) for w in widths]
        padded = torch.nn.functional.pad(grads, (0, max(widths) - grads.shape[1]))
        blocks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(blocks, padded.contiguous())
        start = self.rank * max(widths)
        return torch.cat(blocks, dim=1) / self.world_size, slice(start, start + grads.shape[1]), float(self.world_size)

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Average ``p.grad`` over ranks for every parameter that has one (one collective on a flat buffer)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not self.enabled or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum_(self, tensor: Tensor) -> None:
        """Replace ``tensor`` by its sum over ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor)

    def sum_metric_state(self, metric: object, device: torch.device) -> None:
        """Add up a metric's accumulated state over ranks: its private tensor and int attributes are sums and
        counts (the :class:`~mtl_train.metrics.base.TaskMetric` contract)."""
        if not self.enabled:
            return
        for name, value in sorted(vars(metric).items()):
            if not name.startswith("_"):
                continue
            if isinstance(value, Tensor):
                self.sum_(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                total = torch.tensor([value], dtype=torch.int64, device=device)
                dist.all_reduce(total)
                setattr(metric, name, int(total.item()))


def init_distributed(device_name: str) -> tuple[Distributed, str]:
    """Join the ``torchrun`` job described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), if any.

    Returns the process's :class:`Distributed` and the device to use: ``cuda:<LOCAL_RANK>`` with nccl when CUDA is
    used, else the CPU with gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device_name
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda under torchrun but CUDA is not available; use trainer.device=cpu (gloo)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size()), f"cuda:{local_rank}" if use_cuda else "cpu"
