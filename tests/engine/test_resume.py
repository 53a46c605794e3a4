"""Resumable runs: an interrupted-then-resumed CPU run reproduces the uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from interrupt import interrupt_at

from mtl_train.engine.report import metrics_table
from mtl_train.engine.trainer import Trainer
from mtl_train.errors import ConfigError, TrainingInterrupted
from mtl_train.train import train

# 36 training segments, batch 8 -> 5 steps per epoch (the last one of 4); 3 epochs -> 15 steps, val every epoch.
RUN = ["debug=smoke", "dataset.num_train=36", "dataset.num_val=16", "trainer.max_steps=null", "trainer.max_epochs=3",
       "trainer.eval_every=null", "trainer.log_every=2", "trainer.plots=false"]
RECORDS = ("losses.csv", "weights.csv", "metrics.jsonl")


def run_dir_records(run_dir: Path) -> dict[str, str]:
    return {name: (run_dir / name).read_text() for name in RECORDS}


@pytest.mark.parametrize(("weighting", "how", "step"), [
    ("rlw", "signal", 7),       # random weights drawn every step: the RNG state is restored
    ("dwa", "crash", 12),       # epoch loss history: the epoch-2 checkpoint (step 10) carries it
    ("gradnorm", "signal", 7),  # learned task weights and their optimizer state
])
def test_interrupted_then_resumed_run_matches_the_uninterrupted_one(
    weighting: str, how: str, step: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [*RUN, f"weighting={weighting}"]
    reference = train(compose_config(overrides, tmp_path / "reference"))
    run_dir = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, step, how)
        expected = TrainingInterrupted if how == "signal" else RuntimeError
        with pytest.raises(expected) as error:
            train(compose_config(overrides, run_dir))
    if how == "signal":
        assert error.value.exit_code == 128 + signal.SIGINT and "trainer.resume=true" in str(error.value)
    # a signal checkpoints at step 7 (mid-epoch 2); a crash at step 12 leaves the epoch-2 checkpoint (step 10)
    resumed = train(compose_config([*overrides, "trainer.resume=true"], run_dir))
    assert run_dir_records(run_dir) == run_dir_records(tmp_path / "reference")
    assert resumed["final"] == reference["final"] and resumed["best"] == reference["best"]
    assert resumed["steps"] == reference["steps"] == 15


def test_a_resumed_runs_wall_time_counts_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that moves 10 s per training step and stands still otherwise: 7 steps, SIGINT, then the other 8. The
    checkpoint holds 70 s; the resumed run reports 150 s in all (also in the end-of-run title), 80 s for its part."""
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    original = Trainer.train_step

    def timed_train_step(self, *args):
        now[0] += 10.0
        return original(self, *args)

    monkeypatch.setattr(Trainer, "train_step", timed_train_step)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7, "signal")
        with pytest.raises(TrainingInterrupted):
            train(compose_config(RUN, run_dir))
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["wall_time_s"] == 70.0
    summary = train(compose_config([*RUN, "trainer.resume=true"], run_dir))
    assert (summary["steps"], summary["wall_time_s"], summary["wall_time_this_part_s"]) == (15, 150.0, 80.0)
    assert json.loads((run_dir / "summary.json").read_text())["wall_time_s"] == 150.0
    assert "15 steps in 150.0 s" in str(metrics_table(summary).title)


def test_resume_from_another_directory_copies_the_rows_up_to_the_checkpoint(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7, "signal")
        with pytest.raises(TrainingInterrupted):
            train(compose_config(RUN, tmp_path / "first"))
    train(compose_config([*RUN, f"trainer.resume={tmp_path / 'first'}"], tmp_path / "second"))
    reference = tmp_path / "reference"
    train(compose_config(RUN, reference))
    assert run_dir_records(tmp_path / "second") == run_dir_records(reference)


def test_resume_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer.resume=True: no checkpoint at .*hydra.run.dir"):
        train(compose_config([*RUN, "trainer.resume=true"], tmp_path / "fresh"))
    corrupt = tmp_path / "corrupt" / "checkpoints" / "last.pt"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot resume from .*last.pt .*corrupt"):
        train(compose_config([*RUN, f"trainer.resume={corrupt}"], tmp_path / "other"))
    train(compose_config(RUN, tmp_path / "ecg2"))
    with pytest.raises(ConfigError, match=r"has columns \['step', 'rhythm', 'denoise'\], this run writes \['step', 'rhythm', 'heart_rate'"):
        train(compose_config([*RUN, "task=ecg_full", f"trainer.resume={tmp_path / 'ecg2'}"], tmp_path / "ecg4"))
    with pytest.raises(ConfigError, match="does not fit this run's model"):
        train(compose_config([*RUN, "backbone.channels=[8,8,8,8]", f"trainer.resume={tmp_path / 'ecg2'}"], tmp_path / "wide"))


@pytest.mark.slow  # two CLI processes training 50 steps: run by `pytest -m slow` (and .ci/run)
def test_sigterm_to_the_cli_checkpoints_and_exits_143_then_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [str(Path(sys.executable).parent / "mtl-train"), "trainer.max_epochs=2", "dataset.num_train=400",
            "trainer.batch_size=16", "trainer.progress=none", "trainer.plots=false", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while not ((run_dir / "losses.csv").is_file() and len((run_dir / "losses.csv").read_text().splitlines()) > 3):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "SIGTERM received: stopped after step" in stderr and (run_dir / "checkpoints" / "last.pt").is_file()
    stopped_at = int(stderr.split("stopped after step ")[1].split(",")[0])
    assert len((run_dir / "losses.csv").read_text().splitlines()) == 1 + stopped_at
    resumed = subprocess.run([*args, "trainer.resume=true"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 50 and len((run_dir / "losses.csv").read_text().splitlines()) == 51
