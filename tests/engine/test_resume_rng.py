"""Resuming restores the global torch RNG: a model whose dropout draws from it trains on, after an interruption,
with the same masks (hence the same losses) as the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config
from interrupt import interrupt_at

from mtl_train.errors import TrainingInterrupted
from mtl_train.train import train

# 24 training segments of 4 s, batch 8 -> 3 steps per epoch; 2 epochs -> 6 steps. A tiny Transformer trunk whose
# dropout (p = 0.5) draws a fresh mask from the global torch RNG at every training step; a minimal denoising head.
RUN = ["debug=smoke", "dataset.num_train=24", "dataset.num_val=8", "dataset.num_test=8", "dataset.duration_s=4.0",
       "backbone=transformer1d", "backbone.d_model=8", "backbone.num_layers=1", "backbone.num_heads=2",
       "backbone.ffn_dim=16", "backbone.dropout=0.5", "task.denoise.head.hidden=4",
       "task.denoise.head.upsample_stages=0", "trainer.max_steps=null", "trainer.max_epochs=2",
       "trainer.eval_every=null", "trainer.plots=false"]
STOP_AFTER_STEP = 4  # mid-epoch 2: the checkpoint is the one the SIGINT writes


def test_resumed_run_draws_the_uninterrupted_runs_dropout_masks(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    train(compose_config(RUN, tmp_path / "reference"))
    run_dir = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_at(patch, STOP_AFTER_STEP)
        with pytest.raises(TrainingInterrupted):
            train(compose_config(RUN, run_dir))
    # The resumed process seeds and builds the model afresh, which leaves the global RNG where the reference run's
    # was before step 1; only the checkpoint's RNG state gives steps 5 and 6 the reference run's dropout masks.
    train(compose_config([*RUN, "trainer.resume=true"], run_dir))
    reference_rows = (tmp_path / "reference" / "losses.csv").read_text().splitlines()
    resumed_rows = (run_dir / "losses.csv").read_text().splitlines()
    assert len(reference_rows) == 1 + 6 and resumed_rows == reference_rows  # the header and steps 1-6
