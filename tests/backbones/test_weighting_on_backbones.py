"""Weighting methods that need shared parameters get them from the model, whatever the backbone: per-task gradient
methods (params mode, and rep mode where z is shared) and GradNorm on every sharing scheme."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mtl_train.backbones.base import Backbone
from mtl_train.backbones.cross_stitch import CrossStitchBackbone
from mtl_train.backbones.mmoe import MMoEBackbone
from mtl_train.backbones.multi_lenet import multi_lenet
from mtl_train.backbones.soft import SoftSharingBackbone
from mtl_train.backbones.transformer import transformer_encoder
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.gradnorm import GradNorm
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.pcgrad import PCGrad

TASKS = ["a", "b"]
SIGNAL = dict(in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
BACKBONES: dict[str, Callable[[], Backbone]] = {
    "soft": lambda: SoftSharingBackbone(TASKS, **SIGNAL),
    "cross_stitch": lambda: CrossStitchBackbone(TASKS, **SIGNAL),
    "mmoe": lambda: MMoEBackbone(TASKS, num_experts=3, **SIGNAL),
    "transformer": lambda: transformer_encoder(TASKS, 1, (16,), d_model=8, num_layers=2, num_heads=2, ffn_dim=16,
                                               patch_size=4),
    "multi_lenet": lambda: multi_lenet(TASKS, 1, (28, 28)),
}
INPUTS = {"multi_lenet": (1, 28, 28)}


def model_and_losses(name: str) -> tuple[MultiTaskModel, torch.Tensor, torch.Tensor]:
    """A model on backbone ``name`` with two classification heads, and (losses, z) of one batch."""
    torch.manual_seed(0)
    backbone = BACKBONES[name]()
    width, dims = backbone.out_channels, backbone.spatial_dims
    heads = {t: ClassificationHead(width, dims, num_classes=3, hidden=8) for t in TASKS}
    model = MultiTaskModel(backbone, heads)
    x, y = torch.randn(8, *INPUTS.get(name, (1, 16))), torch.randint(0, 3, (8,))
    z = model.encode(x)
    outputs = model.decode(z, x)
    return model, torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS]), z


def context(model: MultiTaskModel, z: torch.Tensor) -> StepContext:
    return StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)


@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_gradient_methods_in_params_mode(name: str, method: str) -> None:
    model, losses, z = model_and_losses(name)
    shared = model.shared_parameters()
    grads = task_gradient_matrix(losses, shared)
    assert (grads.norm(dim=1) > 0).all()
    weighting = PCGrad(TASKS, mode="params") if method == "pcgrad" else MGDA(TASKS, mode="params")
    expected = (PCGrad(TASKS, mode="params") if method == "pcgrad" else weighting).aggregate(
        grads, losses.detach())
    weights = weighting.backward(losses, context(model, z))
    assert torch.allclose(weights, expected.weights, atol=1e-5)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    flat = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(flat, expected.direction, atol=1e-5)


def test_soft_sharing_rows_are_orthogonal_so_pcgrad_sums_and_mgda_balances() -> None:
    """Task t's gradient is zero outside tower t: PCGrad finds no conflict (direction = g_a + g_b), and MGDA's
    min-norm point of two orthogonal vectors has weights proportional to 1 / ||g_t||^2."""
    model, losses, _ = model_and_losses("soft")
    grads = task_gradient_matrix(losses, model.shared_parameters())
    assert (grads[0] @ grads[1]).item() == 0.0
    assert torch.allclose(PCGrad(TASKS).aggregate(grads, losses.detach()).direction, grads.sum(dim=0))
    inverse = 1 / grads.norm(dim=1).pow(2)
    weights = MGDA(TASKS, mode="params").aggregate(grads, losses.detach()).weights
    assert torch.allclose(weights, inverse / inverse.sum(), atol=1e-4)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_rep_mode_needs_a_shared_representation(name: str) -> None:
    model, losses, z = model_and_losses(name)
    if not model.backbone.shares_representation:
        with pytest.raises(ConfigError, match="weighting.mode=params"):
            PCGrad(TASKS, mode="rep").backward(losses, context(model, z))
        return
    PCGrad(TASKS, mode="rep").backward(losses, context(model, z))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_gradnorm_on_the_last_shared_layer(name: str) -> None:
    model, losses, z = model_and_losses(name)
    layer = list(model.last_shared_layer().parameters())
    assert any(p.dim() >= 2 for p in layer)
    grads = task_gradient_matrix(losses, layer)
    assert (grads.norm(dim=1) > 0).all()  # every task's gradient reaches W
    method = GradNorm(TASKS)
    weights = method.backward(losses, context(model, z))
    assert weights.tolist() == [1.0, 1.0]
    assert method.weights.grad is not None and torch.isfinite(method.weights.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
