"""trainer.nonfinite: a NaN/inf loss or gradient never reaches the weights; skip counts the step, abort names it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from mtl_train.engine.trainer import Trainer
from mtl_train.errors import NonFiniteLossError
from mtl_train.train import train

RUN = ["debug=smoke", "dataset.num_val=16", "trainer.max_steps=4", "trainer.eval_every=null", "trainer.log_every=1",
       "trainer.plots=false"]


def poison(monkeypatch: pytest.MonkeyPatch, step: int, where: str) -> dict[str, dict]:
    """Make step ``step`` (1-based) produce a NaN: in the denoise loss, or in the gradient of one trunk weight.
    Returns the model/weighting state dicts captured just before and just after that step."""
    original = Trainer.train_step
    captured: dict[str, dict] = {}

    def snapshot(trainer: Trainer) -> dict:
        return {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
                "weighting": {k: v.clone() for k, v in trainer.weighting.state_dict().items()}}

    def train_step(self, inputs, targets, share=1.0):
        if self.step + 1 != step:
            return original(self, inputs, targets, share)
        captured["before"] = snapshot(self)
        if where == "loss":
            targets = {**targets, "clean": torch.full_like(targets["clean"], math.nan)}
            result = original(self, inputs, targets, share)
        else:
            weight = self.model.backbone.shared[0][0].weight
            handle = weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
            result = original(self, inputs, targets, share)
            handle.remove()
        captured["after"] = snapshot(self)
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return captured


def assert_same_state(a: dict, b: dict) -> None:
    for group in ("model", "weighting"):
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), f"{group}.{key} changed"


@pytest.mark.parametrize("weighting", ["gradnorm", "uw"])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_skip_policy_leaves_the_step_out_and_keeps_the_weights_finite_and_positive(
    weighting: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = poison(monkeypatch, 2, where)
    summary = train(compose_config([*RUN, f"weighting={weighting}", "trainer.nonfinite=skip"], tmp_path))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    assert_same_state(captured["before"], captured["after"])  # neither the model nor the method moved
    with open(tmp_path / "weights.csv", newline="") as file:
        rows = [[float(v) for v in row[1:]] for row in list(csv.reader(file))[1:]]
    assert all(math.isnan(v) for v in rows[1])  # the skipped step's row
    assert all(v > 0 and math.isfinite(v) for row in rows[:1] + rows[2:] for v in row)
    assert all(math.isfinite(v) for task in summary["final"]["test"].values() for v in task.values())


def test_abort_policy_names_the_task_and_step_and_keeps_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, 3, "loss")
    with pytest.raises(NonFiniteLossError, match=r"the loss of task 'denoise' is not finite at step 3 .*trainer.nonfinite=skip"):
        train(compose_config(RUN, tmp_path))
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[3].startswith("3,") and "nan" in rows[3]


def test_abort_policy_names_the_parameter_with_a_non_finite_gradient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, 1, "gradient")
    with pytest.raises(NonFiniteLossError, match=r"the gradient of parameter 'backbone.shared.0.0.weight' is not finite at step 1"):
        train(compose_config(RUN, tmp_path))
