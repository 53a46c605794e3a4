"""torchrun data parallelism: 2 CPU processes with gloo reproduce a single-process run with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl_train.engine.distributed import Distributed

BIN = Path(sys.executable).parent
# A model without BatchNorm or dropout, so that 2 x 4 rows compute exactly what 1 x 8 rows do.
RUN = ["debug=smoke", "backbone=transformer1d", "backbone.dropout=0", "trainer.max_steps=4", "dataset.num_val=18",
       "trainer.device=cpu", "trainer.plots=false"]


def run(run_dir: Path, *overrides: str, processes: int = 1) -> dict:
    launcher = [str(BIN / "torchrun"), f"--nproc-per-node={processes}", "-m", "mtl_train.cli"] if processes > 1 else \
        [str(BIN / "mtl-train")]
    result = subprocess.run([*launcher, *RUN, *overrides, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def csv_values(path: Path) -> list[float]:
    """Every value of a losses.csv/weights.csv, row by row."""
    with open(path, newline="") as file:
        return [float(v) for row in list(csv.reader(file))[1:] for v in row]


@pytest.mark.slow  # three torchrun launches: run by `pytest -m slow` (and .ci/run)
@pytest.mark.parametrize("weighting", [
    ["weighting=ew"],
    ["weighting=pcgrad"],                     # per-task gradients over the shared parameters, averaged over ranks
    ["weighting=mgda", "weighting.mode=rep"],  # per-task gradients w.r.t. z, concatenated over ranks' samples
], ids=["ew", "pcgrad-params", "mgda-rep"])
def test_two_gloo_processes_match_one_process(weighting: list[str], tmp_path: Path) -> None:
    single = run(tmp_path / "single", *weighting)
    double = run(tmp_path / "ddp", *weighting, processes=2)
    for name in ("losses.csv", "weights.csv"):
        assert csv_values(tmp_path / "ddp" / name) == pytest.approx(csv_values(tmp_path / "single" / name), rel=1e-4, abs=1e-6)
    for task, metrics in single["final"]["test"].items():  # test metrics reduced over the ranks' halves of the split
        assert double["final"]["test"][task] == pytest.approx(metrics, rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in (tmp_path / "single").iterdir() if not p.name.startswith("."))  # rank 0 alone wrote


def test_a_single_process_is_the_identity() -> None:
    single = Distributed()
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    assert single.global_losses(losses, 1.0) is losses
    grads = torch.randn(2, 5)
    same, own, factor = single.task_gradients(grads, per_sample=True)
    assert same is grads and own == slice(0, 5) and factor == 1.0
    index = torch.arange(6)
    assert single.shard(index)[0] is index


def test_shard_takes_every_world_size_th_row_and_its_share() -> None:
    rows, share = Distributed(rank=1, world_size=2).shard(torch.arange(7))
    assert rows.tolist() == [1, 3, 5] and share == pytest.approx(2 * 3 / 7)
