"""Where the trainer's batches come from: the splits in memory on the training device, or streamed from the host.

* **In memory** (the default for data that fits): every split is prepared once and moved to the training device
  (:meth:`TensorSplit.to`); a batch is one gather there.
* **Streaming**: the splits stay on the host (possibly memory-mapped files, :func:`~mtl_train.data.base.mapped_tensor`)
  and a :class:`torch.utils.data.DataLoader` gathers each batch in worker processes, ahead of the step
  (``trainer.num_workers`` x ``trainer.prefetch_factor`` batches), into pinned memory on CUDA; a thread of the
  training process receives the batches (:class:`BackgroundFetch`), and each is copied to the device without
  blocking.

Both paths cut the same batches: the trainer draws each epoch's permutation itself and hands the loader the very
index batches the in-memory path would gather (:func:`epoch_index_batches`), so a run's parameters do not depend
on the path, and the checkpoint's data-generator state and ``batch_in_epoch`` resume either path exactly.
:func:`place_data` decides between them (``trainer.data_on_device``, ``trainer.data_budget_mb``).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mtl_train.data.base import TensorSplit
from mtl_train.engine.distributed import Distributed

Batch = tuple[Tensor, dict[str, Tensor]]
MIB = 2 ** 20


@dataclass(frozen=True)
class DataPlacement:
    """Where the splits live during training, and why (logged once, and kept in ``summary.json``)."""

    streaming: bool
    prepared_bytes: int
    reason: str

    def summary(self, num_workers: int, prefetch_factor: int, pin_memory: bool) -> dict:
        """The placement as ``summary.json``'s ``data_loading``: the path, the bytes, the reason and, when
        streaming, the loader's settings."""
        loader = {"num_workers": num_workers, "prefetch_factor": prefetch_factor if num_workers else None,
                  "pin_memory": pin_memory} if self.streaming else {}
        return {"path": "streaming" if self.streaming else "in_memory", "prepared_mb": self.prepared_bytes / MIB,
                "reason": self.reason, **loader}


def place_data(data_on_device: bool | str, budget_mb: float, splits: Iterable[TensorSplit],
               device: torch.device) -> DataPlacement:
    """In memory on ``device`` or streamed: ``trainer.data_on_device`` true or false decides; ``auto`` keeps the
    splits in memory when their prepared size (float32 inputs and the targets, :attr:`TensorSplit.prepared_bytes`)
    is at most ``budget_mb`` MiB (``trainer.data_budget_mb``), else streams them."""
    size = sum(split.prepared_bytes for split in splits)
    text = f"the splits take {size / MIB:.1f} MiB prepared"
    if data_on_device is True:
        return DataPlacement(False, size, f"in memory on {device}: trainer.data_on_device=true ({text})")
    if data_on_device is False:
        return DataPlacement(True, size, f"streamed to {device}: trainer.data_on_device=false ({text})")
    if size <= budget_mb * MIB:
        return DataPlacement(False, size, f"in memory on {device}: {text}, within "
                                          f"trainer.data_budget_mb={budget_mb:g} (trainer.data_on_device=auto)")
    return DataPlacement(True, size, f"streamed to {device}: {text}, over trainer.data_budget_mb={budget_mb:g} "
                                     "(trainer.data_on_device=auto)")


def epoch_index_batches(order: Tensor, batch_size: int, first_batch: int, distributed: Distributed
                        ) -> list[tuple[Tensor, float]]:
    """This rank's rows of each global batch of the permutation ``order``, from batch ``first_batch`` on, each
    with the rank's share of its batch (:meth:`Distributed.shard`)."""
    return [distributed.shard(order[start:start + batch_size])
            for start in range(first_batch * batch_size, len(order), batch_size)]


def eval_index_batches(rows: int, batch_size: int) -> list[Tensor]:
    """The rows ``0 .. rows - 1`` in order, in batches of ``batch_size``."""
    return list(torch.arange(rows).split(batch_size))


class SplitBatches(Dataset):
    """The splits, indexed by whole batches: ``dataset[(split, index)]`` is :meth:`TensorSplit.batch` (one gather
    per tensor, in a loader worker)."""

    def __init__(self, splits: dict[str, TensorSplit]) -> None:
        self.splits = splits

    def __getitem__(self, item: tuple[str, np.ndarray]) -> Batch:
        name, index = item
        return self.splits[name].batch(torch.from_numpy(index))


class IndexBatches(Sampler):
    """The ``(split, index)`` items the next pass of a loader gathers, set before each pass (:meth:`plan`); the
    indices travel to the workers as numpy arrays (pickled as bytes; a tensor would need a shared-memory file)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, np.ndarray]] = []

    def plan(self, split: str, indices: Iterable[Tensor]) -> None:
        self.items = [(split, index.cpu().numpy()) for index in indices]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class BackgroundFetch:
    """The items of ``source``, taken from it by a thread of this process up to ``depth`` items ahead.

    Receiving a batch from a DataLoader worker (the queue, then one shared-memory file per tensor) costs the
    receiving thread about 1-2 ms on a small CPU; this thread pays it while the training thread computes (torch
    ops release the GIL). Iterate it from one thread; :meth:`close` stops it early."""

    _END = object()

    def __init__(self, source: Iterator[Any], depth: int) -> None:
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(source,), name="mtl-train-batches", daemon=True)
        self.thread.start()

    def _fill(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as error:  # raised again in the iterating thread
            self._put(error)

    def _put(self, item: Any) -> bool:
        """Queue ``item`` once there is room; False when :meth:`close` came first."""
        while not self.stopped.is_set():
            try:
                self.ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while (item := self.ready.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the thread (after the item it is taking, if any)."""
        self.stopped.set()
        self.thread.join()


class StreamingLoader:
    """Batches of host-side splits, gathered by a :class:`DataLoader` ahead of the step and moved to ``device``.

    ``num_workers`` worker processes (0: the main process gathers each batch when asked), each keeping up to
    ``prefetch_factor`` batches ready; they persist across passes, and a :class:`BackgroundFetch` thread receives
    their batches. ``pin_memory`` gathers into page-locked memory, from which the copy to a GPU does not block. On
    Linux the workers are forked, so they share the splits (and their memory maps) with this process instead of
    receiving a copy. The loader draws its workers' seeds from a generator of its own, not from the global torch
    RNG, so streaming leaves dropout masks as they are in memory. One pass at a time: a new pass ends the last.
    """

    def __init__(self, splits: dict[str, TensorSplit], device: torch.device, num_workers: int, prefetch_factor: int,
                 pin_memory: bool) -> None:
        self.device = device
        self.sampler = IndexBatches()
        self.depth = prefetch_factor
        self.fetch: BackgroundFetch | None = None  # the current pass's thread, with workers
        workers = num_workers > 0
        self.loader = DataLoader(
            SplitBatches(splits), batch_size=None, sampler=self.sampler, num_workers=num_workers,
            prefetch_factor=prefetch_factor if workers else None, persistent_workers=workers, pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(0),
            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None,
        )

    def _end_pass(self) -> None:
        if self.fetch is not None:
            self.fetch.close()
            self.fetch = None

    def close(self) -> None:
        """End the pass and stop the persistent workers (they would otherwise live as long as this loader)."""
        self._end_pass()
        iterator, self.loader._iterator = self.loader._iterator, None  # where DataLoader keeps persistent workers
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def batches(self, split: str, indices: Iterable[Tensor]) -> Iterator[Batch]:
        """The batches of ``split``'s rows ``indices`` (one index tensor per batch), in order, on the device."""
        self._end_pass()
        self.sampler.plan(split, indices)
        source = iter(self.loader)
        if self.loader.num_workers:
            self.fetch = BackgroundFetch(source, self.depth)
            source = iter(self.fetch)
        for inputs, targets in source:
            yield (inputs.to(self.device, non_blocking=True),
                   {name: t.to(self.device, non_blocking=True) for name, t in targets.items()})
