"""Diagnostics in whole runs: summary.json's block, the plots, and gradients.csv / affinity.csv continuous across
a stop and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config
from interrupt import interrupt_at

from mtl_train.errors import TrainingInterrupted
from mtl_train.train import train

# As tests/engine/test_resume.py: 5 steps per epoch, 3 epochs -> 15 steps.
RUN = ["debug=smoke", "dataset.num_train=36", "dataset.num_val=16", "trainer.max_steps=null", "trainer.max_epochs=3",
       "trainer.eval_every=null", "trainer.log_every=2", "trainer.plots=false"]
DIAGNOSTICS = ["diagnostics=affinity", "diagnostics.every=2", "diagnostics.affinity_every=5"]


def test_a_smoke_run_writes_the_summary_block_the_files_and_the_plots(tmp_path: Path) -> None:
    """debug=smoke (2 steps), every step sampled, the default two ECG tasks."""
    summary = train(compose_config(["debug=smoke", "trainer.eval_every=2", "dataset.num_val=16", "diagnostics=affinity",
                                    "diagnostics.every=1",
                                    "diagnostics.affinity_every=2"], tmp_path))
    tasks = summary["tasks"]
    gradients, affinity = summary["diagnostics"]["gradients"], summary["diagnostics"]["affinity"]
    assert (gradients["wrt"], gradients["every"], gradients["samples"]) == ("rep", 1, 2)
    assert [gradients["mean_cosine"][i][i] for i in range(2)] == [1.0] * 2
    assert gradients["mean_cosine"][0][1] == gradients["mean_cosine"][1][0]
    assert len(gradients["mean_norm"]) == 2 and 0 <= gradients["conflict_fraction"] <= 1
    assert (affinity["every"], affinity["samples"]) == (2, 1)  # step 1
    assert [affinity["mean"][i][i] for i in range(2)] == [None] * 2
    assert sorted(t for group in affinity["groups"] for t in group) == sorted(tasks)
    assert json.loads((tmp_path / "summary.json").read_text())["diagnostics"] == summary["diagnostics"]
    for png in ("gradient_cosines.png", "gradient_conflict.png", "affinity.png"):
        assert (tmp_path / png).stat().st_size > 0
    header = (tmp_path / "gradients.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "conflict_fraction", *(f"norm:{t}" for t in tasks),
                      *(f"cos:{a}:{b}" for i, a in enumerate(tasks) for b in tasks[i + 1:])]
    first, second = tasks
    assert (tmp_path / "affinity.csv").read_text().splitlines()[0] == f"step,{first}->{second},{second}->{first}"


@pytest.mark.slow
def test_resume_keeps_the_diagnostics_files_continuous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train(compose_config([*RUN, *DIAGNOSTICS], tmp_path / "reference"))
    assert reference["diagnostics"]["gradients"]["samples"] == 8  # steps 1, 3, ..., 15
    assert reference["diagnostics"]["affinity"]["samples"] == 3  # steps 1, 6, 11
    run_dir = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)
        with pytest.raises(TrainingInterrupted):
            train(compose_config([*RUN, *DIAGNOSTICS], run_dir))
    resumed = train(compose_config([*RUN, *DIAGNOSTICS, "trainer.resume=true"], run_dir))
    for name in ("gradients.csv", "affinity.csv", "losses.csv"):
        assert (run_dir / name).read_text() == (tmp_path / "reference" / name).read_text()
    assert resumed["diagnostics"] == reference["diagnostics"]


@pytest.mark.slow
def test_off_writes_no_diagnostics(tmp_path: Path) -> None:
    summary = train(compose_config(["debug=smoke", "trainer.plots=false"], tmp_path))
    assert "diagnostics" not in summary and not (tmp_path / "gradients.csv").exists()
