"""Properties every weighting method in configs/weighting/ must have (found by glob, so new methods are covered)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config, image_data_overrides

from mtl_train.train import train
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.gradient_based import GradientWeighting

METHODS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml"))
TASKS = ["a", "b", "c"]


def build(name: str):
    return instantiate(compose_config([f"weighting={name}"]).weighting, "weighting", task_names=TASKS)


GRADIENT_METHODS = [name for name in METHODS if isinstance(build(name), GradientWeighting)]
# GradDrop draws one uniform per coordinate, so permuting the columns permutes its output only in distribution
# (tests/weighting/test_methods_catalogue_a.py checks it with the draws permuted alike).
COORDINATEWISE_RANDOM = {"graddrop"}


@pytest.mark.parametrize("name", [name for name in GRADIENT_METHODS if name not in COORDINATEWISE_RANDOM])
def test_rule_is_invariant_to_how_rows_are_flattened(name: str) -> None:
    torch.manual_seed(0)
    grads = torch.randn(len(TASKS), 40)
    grads[1] -= 1.5 * grads[0]  # make a conflict
    losses = torch.tensor([0.5, 1.0, 2.0])
    permutation = torch.randperm(grads.shape[1])
    first, second = build(name), build(name)
    direct = first.aggregate(grads, losses)
    permuted = second.aggregate(grads[:, permutation], losses)
    assert direct.direction.shape == (grads.shape[1],) and direct.weights.shape == (len(TASKS),)
    assert torch.isfinite(direct.direction).all() and torch.isfinite(direct.weights).all()
    torch.testing.assert_close(permuted.direction, direct.direction[permutation], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(permuted.weights, direct.weights, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_state_survives_a_checkpoint_round_trip(name: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    """Train 3 steps (classification + segmentation, which every method accepts), then load the saved weighting
    state into a fresh instance: identical state."""
    cfg = compose_config(["debug=smoke", "task=cls_seg", *image_data_overrides(tiny_fashion_root), f"weighting={name}",
                          "trainer.max_steps=3"], tmp_path)
    train(cfg)
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["weighting"]
    fresh = instantiate(cfg.weighting, "weighting", task_names=list(cfg.task))
    fresh.load_state_dict(saved)
    buffer = io.BytesIO()
    torch.save(fresh.state_dict(), buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert reloaded.keys() == saved.keys()
    for key, value in saved.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(reloaded[key], value)


@pytest.mark.parametrize("name", METHODS)
def test_bf16_autocast_run_gives_finite_weights(name: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    cfg = compose_config(["debug=smoke", "task=cls_seg", *image_data_overrides(tiny_fashion_root), f"weighting={name}",
                          "trainer.amp=bf16", "trainer.max_steps=3"], tmp_path)
    train(cfg)
    rows = (tmp_path / "weights.csv").read_text().splitlines()[1:]
    values = [float(v) for row in rows for v in row.split(",")[1:]]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(values)))
