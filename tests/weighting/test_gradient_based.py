"""The fp16 loss scale in mtl_train.weighting.gradient_based: G reaches ``aggregate`` in true units, unscaled in
float32, and every gradient method's step does not depend on the loss scale."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIG_DIR, compose_config

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, unscale, weighted_sum

TASKS = ["a", "b", "c"]
WEIGHTINGS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml") if "jacobian:" in p.read_text())
CASES = [(name, mode) for name in WEIGHTINGS for mode in ("params", "rep")
         if not (mode == "rep" and name in ("db_mtl", "excess_mtl", "gradnorm", "moco"))]  # no rep mode


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = hard_cnn(TASKS, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
    heads = {t: ClassificationHead(4, 1, num_classes=3, hidden=8) for t in TASKS}
    return MultiTaskModel(backbone, heads)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 16, generator=generator), torch.randint(0, 3, (8,), generator=generator)


class RecordG(GradientWeighting):
    """Equal weights; keeps the G that ``aggregate`` receives."""

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Aggregation:
        self.grads = grads
        return weighted_sum(grads, torch.ones(grads.shape[0], dtype=grads.dtype))


def test_unscale_divides_after_casting_to_float32() -> None:
    """1e-6 * 65536 is a normal fp16 number; divided in fp16 it would become a subnormal (spacing 6e-8)."""
    scaled = torch.tensor([1e-6, 3e-6, 5e-5], dtype=torch.float16) * 65536
    true = scaled.float() / 65536
    assert unscale(scaled, 65536.0).dtype == torch.float32
    torch.testing.assert_close(unscale(scaled, 65536.0), true, rtol=0, atol=0)
    assert unscale(torch.ones(2, dtype=torch.float64), 2.0).dtype == torch.float64


def test_fp16_g_is_unscaled_in_float32() -> None:
    """``mode=rep`` with z in fp16 (as under fp16 autocast) and a loss scale of 65536: the per-task gradients w.r.t. z
    are ~1e-5, so G / 65536 computed in fp16 lands among the subnormals (5e-3 relative error). G reaches ``aggregate``
    within fp16's own rounding (~5e-4) of the float32 gradients."""
    model = tiny_model()
    x, y = batch()
    z = model.encode(x).half()
    z_float = z.float()
    outputs = model.decode(z_float, x)
    losses = 1e-3 * torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])
    true = torch.stack([torch.autograd.grad(loss, z_float, retain_graph=True)[0].flatten() for loss in losses])
    assert true.abs().median() < 6.1e-5 / 2  # mostly below fp16's smallest normal number once unscaled
    method = RecordG(TASKS, mode="rep")
    method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss * 65536.0, loss_scale=65536.0,
                                        shared_representation=z))
    assert method.grads.dtype == torch.float32
    assert ((method.grads - true).norm() / true.norm()).item() < 1e-3


def methods(name: str, mode: str, count: int) -> list[torch.nn.Module]:
    """``count`` fresh instances of one configured method (the config is composed once)."""
    overrides = [] if name == "gradnorm" else [f"++weighting.mode={mode}"]
    cfg = compose_config([f"weighting={name}", *overrides]).weighting
    return [instantiate(cfg, "weighting", task_names=TASKS) for _ in range(count)]


def step(weighting: torch.nn.Module, loss_scale: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One ``backward`` on the tiny model with the losses scaled by ``loss_scale`` (as GradScaler does); returns the
    weights and every model parameter's gradient divided by ``loss_scale``."""
    model = tiny_model()
    x, y = batch()
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss * loss_scale, loss_scale=loss_scale,
                      shared_representation=z)
    weights = weighting.backward(losses, ctx)
    return weights, [p.grad / loss_scale for p in model.parameters()]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_loss_scale_changes_nothing_but_the_gradients_units(name: str, mode: str) -> None:
    """With loss scale 1024 every method returns the weights it returns unscaled, and leaves 1024 times the
    gradients (so this fails if G were not divided by the loss scale before ``aggregate``)."""
    plain, scaled = methods(name, mode, 2)
    plain_weights, plain_grads = step(plain, 1.0)
    scaled_weights, scaled_grads = step(scaled, 1024.0)
    torch.testing.assert_close(scaled_weights, plain_weights, rtol=1e-4, atol=1e-6)
    for scaled, plain in zip(scaled_grads, plain_grads):
        torch.testing.assert_close(scaled, plain, rtol=1e-4, atol=1e-6)
