"""Data parallelism in the default suite: two gloo processes, each training on its half of every global batch, end
with the parameters of one process trained on the whole batches (the torchrun end-to-end run is in
test_distributed.py, marked slow)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_trainer import TASKS, tiny_trainer

from mtl_train.engine.distributed import Distributed
from mtl_train.weighting.base import Weighting
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.pcgrad import PCGrad

WORLD_SIZE = 2
STEPS = 3  # 16 training rows in global batches of 8: two steps of epoch 1 and one of epoch 2 (a fresh order)
WEIGHTINGS: dict[str, Callable[[], Weighting]] = {
    "ew": lambda: EqualWeighting(TASKS),                          # the averaged parameter gradients
    "pcgrad-params": lambda: PCGrad(TASKS, seed=0, mode="params"),  # per-task gradients averaged over the ranks
    "mgda-rep": lambda: MGDA(TASKS, mode="rep"),                   # per-sample gradients w.r.t. z, concatenated
}


def trained_parameters(weighting: str, output_dir: Path, distributed: Distributed) -> dict[str, torch.Tensor]:
    """The model's parameters after ``STEPS`` steps of SGD (plain SGD: an update twice too large shows)."""
    trainer = tiny_trainer(WEIGHTINGS[weighting](), output_dir, distributed=distributed, max_steps=STEPS)
    trainer.fit()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def train_on_one_rank(rank: int, store: str, output_dir: Path) -> None:
    """One process of the job: every weighting in turn, its parameters saved to ``rank<rank>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    distributed = Distributed(rank=rank, world_size=WORLD_SIZE)
    trained = {name: trained_parameters(name, output_dir, distributed) for name in WEIGHTINGS}
    torch.save(trained, output_dir / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears down gloo while the other still uses it
    dist.destroy_process_group()
    # The results are on disk: end without interpreter finalisation, where gloo's leftover threads can abort the
    # process ("terminate called without an active exception", SIGABRT) on a loaded machine.
    os._exit(0)


@pytest.fixture(scope="module")
def two_process_parameters(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Each rank's trained parameters, per weighting (one two-process job for every test of this file)."""
    output_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(train_on_one_rank, args=(str(output_dir / "store"), output_dir), nprocs=WORLD_SIZE, join=True)
    return [torch.load(output_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_two_gloo_processes_end_with_the_single_process_parameters(
    weighting: str, two_process_parameters: list[dict[str, dict[str, torch.Tensor]]], tmp_path: Path
) -> None:
    single = trained_parameters(weighting, tmp_path, Distributed())
    initial = dict(tiny_trainer(WEIGHTINGS[weighting](), tmp_path).model.named_parameters())
    assert any(not torch.equal(single[name], initial[name]) for name in single)  # training moved the model
    for rank, per_weighting in enumerate(two_process_parameters):
        for name, value in per_weighting[weighting].items():
            assert torch.allclose(value, single[name], rtol=1e-5, atol=1e-6), f"rank {rank}, parameter {name}"
