"""Gradient statistics against hand-computed values, and in the trainer: reuse of a gradient method's G, no extra
backward when off, and the same training with diagnostics on as off."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from omegaconf import OmegaConf
from tiny_trainer import TASKS, tiny_data, tiny_trainer

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.diagnostics.gradients import DiagnosticsSettings, gradient_matrix, gradient_statistics
from mtl_train.diagnostics.sampling import GRADIENTS, DiagnosticsSampler
from mtl_train.engine.trainer import Trainer
from mtl_train.errors import ConfigError
from mtl_train.model import MultiTaskModel
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.gradients import TrunkJacobian
from mtl_train.weighting.uw import UncertaintyWeighting

GRADIENT_METHODS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml") if "jacobian:" in p.read_text())
NO_REP_MODE = ("db_mtl", "excess_mtl", "gradnorm", "moco")


class DotHead(nn.Module):
    """Task output a . z (no bias): dL/dz = a for the loss L = a . z of one sample."""

    def __init__(self, a: list[float]) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float32))

    def forward(self, z: Tensor, spatial: tuple) -> Tensor:
        return z @ self.a


def hand_model() -> MultiTaskModel:
    """z = W x with W = I (2x2); heads a_1 = (1, 0), a_2 = (1, 1), a_3 = (-1, 0)."""
    trunk = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        trunk.weight.copy_(torch.eye(2))
    backbone = HardSharedBackbone([trunk], ["t1", "t2", "t3"], split_depth=1, out_channels=2, spatial_dims=0)
    return MultiTaskModel(backbone, {"t1": DotHead([1, 0]), "t2": DotHead([1, 1]), "t3": DotHead([-1, 0])})


@pytest.mark.parametrize(("wrt", "norm_factor"), [("rep", 1.0), ("params", 5.0)])
def test_norms_cosines_and_conflicts_match_the_hand_computed_ones(wrt: str, norm_factor: float) -> None:
    """L_t = a_t . W x for x = (3, 4): dL_t/dz = a_t and dL_t/dW = a_t x^T, whose norm is |a_t| |x| = 5 |a_t| and
    whose cosines are those of the a_t: cos(1,2) = 1/sqrt(2), cos(1,3) = -1, cos(2,3) = -1/sqrt(2); two of the
    three pairs conflict."""
    model = hand_model()
    x = torch.tensor([[3.0, 4.0]])
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([outputs[t].sum() for t in ("t1", "t2", "t3")])
    grads = gradient_matrix(losses, z, model, wrt, TrunkJacobian("loop"))
    row = gradient_statistics(grads, torch.tensor([True, True, True]))
    root2 = math.sqrt(2)
    expected = [2 / 3, norm_factor, norm_factor * root2, norm_factor, 1 / root2, -1.0, -1 / root2]
    assert row.tolist() == pytest.approx(expected, abs=1e-6)
    assert all(p.grad is None for p in model.parameters())  # torch.autograd.grad: no .grad touched

    inactive = gradient_statistics(grads, torch.tensor([True, False, True]))  # task 2 switched off
    assert inactive[0].item() == 1.0  # the one active pair (1, 3) conflicts
    assert math.isnan(inactive[2]) and math.isnan(inactive[4]) and math.isnan(inactive[6])
    assert inactive[5].item() == pytest.approx(-1.0)


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="diagnostics.wrt must be"):
        DiagnosticsSettings(every=5, wrt="z")
    with pytest.raises(ConfigError, match="diagnostics.every must be an integer >= 0"):
        DiagnosticsSettings(every=-1)


def with_diagnostics(trainer: Trainer, **settings: object) -> Trainer:
    trainer.diagnostics = DiagnosticsSampler(DiagnosticsSettings(**settings), trainer.model)
    return trainer


def backward_counter(trainer: Trainer) -> list[int]:
    """Counts every backward that reaches z = the trunk's output (a tensor hook, registered at each forward)."""
    count = [0]

    def register(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda grad: count.__setitem__(0, count[0] + 1))

    trainer.model.backbone.shared.register_forward_hook(register)
    return count


def first_row(trainer: Trainer) -> Tensor:
    batch = trainer.splits["train"]
    trainer.train_step(batch.inputs[:8], {t: batch.targets[t][:8] for t in TASKS})
    return trainer.diagnostics.rows[GRADIENTS][0][1]


def gradient_method(name: str, mode: str) -> nn.Module:
    """``configs/weighting/<name>.yaml`` with ``mode`` (read directly: composing every method costs seconds)."""
    root = OmegaConf.create({"seed": 0, "weighting": OmegaConf.load(CONFIG_DIR / "weighting" / f"{name}.yaml")})
    if name != "gradnorm":
        root.weighting.mode = mode
    return instantiate(root.weighting, "weighting", task_names=TASKS)


def test_off_adds_no_backward_and_on_adds_k_for_a_loss_based_method(tmp_path: Path) -> None:
    counts = {}
    for every in (0, 1):
        trainer = tiny_trainer(EqualWeighting(TASKS), tmp_path)
        if every:
            with_diagnostics(trainer, every=every, wrt="rep")
        count = backward_counter(trainer)
        batch = trainer.splits["train"]
        trainer.train_step(batch.inputs[:8], {t: batch.targets[t][:8] for t in TASKS})
        counts[every] = count[0]
    assert counts == {0: 1, 1: 1 + len(TASKS)}


@pytest.mark.parametrize("wrt", ["rep", "params"])
def test_pcgrad_reuses_its_gradients_with_no_extra_backward_and_the_same_numbers(tmp_path: Path, wrt: str) -> None:
    counts, rows = {}, {}
    for on in (False, True):
        trainer = tiny_trainer(gradient_method("pcgrad", wrt), tmp_path)
        if on:
            with_diagnostics(trainer, every=1, wrt=wrt)
        count = backward_counter(trainer)
        batch = trainer.splits["train"]
        trainer.train_step(batch.inputs[:8], {t: batch.targets[t][:8] for t in TASKS})
        counts[on] = count[0]
        rows[on] = trainer.diagnostics.rows[GRADIENTS][0][1] if on else None
    assert counts[True] == counts[False]
    extra_path = first_row(with_diagnostics(tiny_trainer(EqualWeighting(TASKS), tmp_path), every=1, wrt=wrt))
    torch.testing.assert_close(rows[True], extra_path, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("wrt", ["rep", "params"])
def test_every_gradient_method_gives_the_statistics_of_the_extra_path(tmp_path: Path, wrt: str) -> None:
    """Whether a method keeps its G (keeps_gradients, with wrt = its mode) or not, the first step's row is EW's
    (same model, same batch)."""
    reference = first_row(with_diagnostics(tiny_trainer(EqualWeighting(TASKS), tmp_path), every=1, wrt=wrt))
    for name in GRADIENT_METHODS:
        if wrt == "rep" and name in NO_REP_MODE:
            continue
        row = first_row(with_diagnostics(tiny_trainer(gradient_method(name, wrt), tmp_path), every=1, wrt=wrt))
        torch.testing.assert_close(row, reference, rtol=1e-5, atol=1e-7, msg=f"{name} wrt=mode={wrt}")


@pytest.mark.parametrize("make", [lambda: EqualWeighting(TASKS), lambda: UncertaintyWeighting(TASKS),
                                  lambda: gradient_method("pcgrad", "params")])
def test_training_is_the_same_with_diagnostics_on_and_off(tmp_path: Path, make) -> None:
    results = []
    for on in (False, True):
        trainer = tiny_trainer(make(), tmp_path, max_steps=4, data=tiny_data(num_train=32))
        if on:
            with_diagnostics(trainer, every=1, wrt="params", affinity_every=1)
        batches = trainer._train_batches()
        steps = [trainer.train_step(*next(batches)[:2]) for _ in range(4)]
        results.append((steps, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    (steps_off, params_off), (steps_on, params_on) = results
    for (losses_off, weights_off), (losses_on, weights_on) in zip(steps_off, steps_on):
        torch.testing.assert_close(losses_on, losses_off, rtol=0, atol=1e-6)
        torch.testing.assert_close(weights_on, weights_off, rtol=0, atol=1e-6)
    for name in params_off:
        torch.testing.assert_close(params_on[name], params_off[name], rtol=0, atol=1e-6)


def test_the_statistics_read_nothing_on_the_host() -> None:
    """Under FakeTensorMode (shapes, no values) any host read of a value raises: a GPU step never waits for them."""
    with FakeTensorMode():
        row = gradient_statistics(torch.randn(3, 10), torch.ones(3, dtype=torch.bool))
    assert row.shape == (1 + 3 + 3,)
