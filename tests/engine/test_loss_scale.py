"""fp16 loss scaling is invisible to the gradient methods: a training step under a GradScaler (here a CPU one with
scale 1024, the same code path as CUDA fp16) records the same weights and leaves the same (unscaled) gradients as
an unscaled step, for methods whose rules depend on the size of the task gradients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_trainer import TASKS, first_batch, tiny_trainer

from mtl_train.engine.trainer import Trainer
from mtl_train.weighting.base import Weighting
from mtl_train.weighting.imtl import IMTL
from mtl_train.weighting.nash_mtl import NashMTL

LOSS_SCALE = 1024.0
WEIGHTINGS: dict[str, Callable[[], Weighting]] = {
    # G -> cG gives alpha -> alpha / c: on scaled G the recorded weights would be 1024 times too small
    "nash_mtl": lambda: NashMTL(TASKS),
    # the weights do not depend on the scale of G, but the direction alpha @ G does (1024 times too large)
    "imtl": lambda: IMTL(TASKS),
}


def gradients(trainer: Trainer) -> list[torch.Tensor]:
    """The ``.grad`` of every parameter the optimizer steps (model and weighting), after the step's unscaling."""
    return [p.grad for group in trainer.optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_a_loss_scaled_step_records_the_weights_and_gradients_of_an_unscaled_one(weighting: str,
                                                                                tmp_path: Path) -> None:
    plain = tiny_trainer(WEIGHTINGS[weighting](), tmp_path)
    scaled = tiny_trainer(WEIGHTINGS[weighting](), tmp_path)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=LOSS_SCALE)
    assert scaled.scaler.is_enabled() and not plain.scaler.is_enabled()

    _, plain_weights = plain.train_step(*first_batch(plain))
    _, scaled_weights = scaled.train_step(*first_batch(scaled))

    assert scaled.scaler.get_scale() == LOSS_SCALE  # no overflow: the scaled step was taken, not skipped
    assert torch.allclose(scaled_weights, plain_weights, rtol=1e-5)
    for scaled_grad, plain_grad in zip(gradients(scaled), gradients(plain), strict=True):
        assert torch.allclose(scaled_grad, plain_grad, rtol=1e-5, atol=1e-8)
    for scaled_param, plain_param in zip(scaled.model.parameters(), plain.model.parameters()):
        assert torch.allclose(scaled_param, plain_param, rtol=1e-5, atol=1e-8)
