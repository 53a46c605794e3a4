"""trainer.nonfinite: a NaN/inf loss or gradient never reaches the weights; skip counts the step and leaves the model
and the method exactly as they were, abort names it. fp16: a step GradScaler skips does not move the method."""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config
from test_trainer import built_trainer, train_batch
from torch import Tensor

from mtl_train.engine.distributed import Distributed
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


def weighting_state(trainer: Trainer) -> dict:
    """A deep copy of everything a skipped step must leave as it was: the method's whole state (buffers,
    parameters and extra state such as random generators and step counters), the model's and the global RNG."""
    return {"weighting": copy.deepcopy(trainer.weighting.state_dict()),
            "model": copy.deepcopy(trainer.model.state_dict()), "rng": torch.get_rng_state()}


def assert_equal(a: Any, b: Any, where: str = "state") -> None:
    """Exact equality of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(a, Tensor):
        assert torch.equal(a, b), f"{where} changed"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where} keys changed"
        for key in a:
            assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where} length changed"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where} changed: {a!r} -> {b!r}"


@contextmanager
def broken_gradient(monkeypatch: pytest.MonkeyPatch, value: float) -> Iterator[None]:
    """Within the block, the first model parameter's gradient is set to ``value`` once the method has run (where
    the trainer averages gradients over processes, just before its checks)."""
    original = Distributed.average_gradients

    def average_gradients(self: Distributed, params: list[torch.nn.Parameter]) -> None:
        original(self, params)
        params[0].grad.fill_(value)

    with monkeypatch.context() as patch:
        patch.setattr(Distributed, "average_gradients", average_gradients)
        yield


@pytest.mark.parametrize("weighting", ["rlw", "pcgrad", "gradvac", "nash_mtl"])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_skipped_step_leaves_the_whole_method_state_and_the_next_step_unchanged(
    weighting: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [f"weighting={weighting}", "trainer.nonfinite=skip"]
    skipping = built_trainer(overrides, tmp_path / "skipping", monkeypatch)
    clean = built_trainer(overrides, tmp_path / "clean", monkeypatch)  # the same run without the bad step
    first, bad, second = (train_batch(skipping, i) for i in range(3))
    for trainer in (skipping, clean):
        trainer.train_step(*first)
    before = weighting_state(skipping)
    if where == "loss":
        _, weights = skipping.train_step(bad[0], {**bad[1], "clean": torch.full_like(bad[1]["clean"], math.nan)})
    else:  # after the method ran: its generator, counters and EMA targets have moved
        with broken_gradient(monkeypatch, math.nan):
            _, weights = skipping.train_step(*bad)
    assert skipping.skipped_steps == 1 and weights.isnan().all()
    assert_equal(before, weighting_state(skipping))
    assert torch.equal(skipping.train_step(*second)[1], clean.train_step(*second)[1])
    assert_equal(weighting_state(skipping), weighting_state(clean))


@pytest.mark.parametrize("weighting", ["famo", "gradvac"])
def test_a_step_that_gradscaler_skips_leaves_the_method_unchanged(weighting: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16's loss scaling, run on the CPU: GradScaler skips the optimizer step whose gradients overflowed; FAMO's
    after_optimizer_step (its extra forward and logit update) must not run and GradVac's EMA targets and generator
    must not move."""
    trainer = built_trainer([f"weighting={weighting}"], tmp_path, monkeypatch)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    calls: list[int] = []
    original = type(trainer.weighting).after_optimizer_step

    def after_optimizer_step(self, ctx) -> None:
        calls.append(ctx.step)
        original(self, ctx)

    monkeypatch.setattr(type(trainer.weighting), "after_optimizer_step", after_optimizer_step)
    trainer.train_step(*train_batch(trainer, 0))
    assert calls == [0] and trainer.scaler.get_scale() == 2.0**10  # an ordinary step
    before = weighting_state(trainer)
    parameters = {name: p.clone() for name, p in trainer.model.named_parameters()}
    with broken_gradient(monkeypatch, math.inf):
        trainer.train_step(*train_batch(trainer, 1))
    assert trainer.scaler.get_scale() == 2.0**9  # GradScaler skipped the step and backed off
    assert calls == [0]
    assert_equal(before["weighting"], weighting_state(trainer)["weighting"])
    assert_equal(parameters, dict(trainer.model.named_parameters()))
