"""The optional TensorBoard logger writes the same numbers as losses.csv / metrics.jsonl."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import compose_config

from mtl_train.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tensorboard_scalars_match_the_csv_and_jsonl(tmp_path: Path) -> None:
    train(compose_config(["debug=smoke", "dataset.num_val=16", "trainer.tensorboard=true", "weighting=uw"], tmp_path))
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    with open(tmp_path / "losses.csv", newline="") as file:
        losses = list(csv.DictReader(file))
    logged = [(e.step, e.value) for e in events.Scalars("loss/rhythm")]
    assert logged == [(int(r["step"]), pytest.approx(float(r["rhythm"]), rel=1e-5)) for r in losses]
    assert len(events.Scalars("weight/denoise")) == 2
    last_val = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-2]
    assert events.Scalars("val/denoise/psnr")[-1].value == pytest.approx(last_val["metrics"]["denoise"]["psnr"], rel=1e-5)
