"""CR-MOGM's ``weight_ema`` reaches every gradient method: each trains with it in each of its modes (a step that
skipped the average would stop with a ConfigError), and after two steps the applied weights are the average of the
method's own weights (checked exactly for PCGrad and MGDA in tests/weighting/test_methods_catalogue_c.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR
from omegaconf import OmegaConf
from tiny_trainer import TASKS, tiny_trainer

from mtl_train.errors import ConfigError
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.gradient_based import GradientWeighting
from mtl_train.weighting.nash_mtl import NashMTL

NAMES = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml") if "weight_ema:" in p.read_text())
CASES = [(name, mode) for name in NAMES for mode in ("params", "rep")]


def build(name: str, mode: str, weight_ema: float) -> GradientWeighting:
    config = OmegaConf.create({"seed": 0, "weighting": OmegaConf.load(CONFIG_DIR / "weighting" / f"{name}.yaml")})
    config.weighting.weight_ema = weight_ema
    if "mode" in config.weighting:
        config.weighting.mode = mode
    return instantiate(config.weighting, "weighting", task_names=TASKS)


def test_every_gradient_method_offers_weight_ema() -> None:
    assert {"pcgrad", "mgda", "cagrad", "nash_mtl", "rgw", "graddrop", "upgrad"} <= set(NAMES)


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_every_gradient_method_trains_with_weight_ema(name: str, mode: str, tmp_path: Path) -> None:
    weighting = build(name, mode, 0.9)
    if weighting.mode != mode:
        pytest.skip(f"{name} has no mode {mode}")
    trainer = tiny_trainer(weighting, tmp_path, max_steps=3)
    split = trainer.splits["train"]
    for step in range(3):
        rows = slice(step % 2 * 8, (step % 2 + 1) * 8)
        losses, weights = trainer.train_step(split.inputs[rows], {t: v[rows] for t, v in split.targets.items()})
        trainer.step += 1
        assert torch.isfinite(losses).all() and torch.isfinite(weights).all()
    assert weighting.ema_started.all()


def test_nash_mtl_does_not_average_weights_it_reuses() -> None:
    with pytest.raises(ConfigError, match=r"weighting.update_weights_every=2 Nash-MTL reuses its weights between "
                                          r"updates; set weighting.weight_ema=0 or weighting.update_weights_every=1"):
        NashMTL(TASKS, update_weights_every=2, weight_ema=0.9)
