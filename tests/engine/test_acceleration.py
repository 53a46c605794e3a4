"""accelerate(): channels-last 2-D convolutions give the same outputs and the same training gradients, through the
per-task gradient engine too."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.backbones.multi_lenet import multi_lenet
from mtl_train.engine.acceleration import accelerate
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.pcgrad import PCGrad

TASKS = ["a", "b", "c"]


def lenet() -> MultiTaskModel:
    """MultiLeNet without dropout (dropout masks are drawn in memory order, so they would differ between layouts)."""
    torch.manual_seed(0)
    backbone = multi_lenet(TASKS, 1, (28, 28), dropout=0.0)
    return MultiTaskModel(backbone, {t: ClassificationHead(50, 0, num_classes=10, hidden=50) for t in TASKS})


def step(model: MultiTaskModel, weighting: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])
    weights = weighting.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss,
                                                     shared_representation=z))
    return weights, [p.grad for p in model.parameters()]


def test_channels_last_converts_the_2d_kernels_only() -> None:
    model = accelerate(lenet(), channels_last=True)
    for p in model.parameters():
        assert p.is_contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
    assert any(p.dim() == 4 for p in model.parameters())
    signal = MultiTaskModel(hard_cnn(TASKS, 1, (16,), 1, channels=(4, 4), kernel_size=3),
                            {t: ClassificationHead(4, 1, num_classes=3) for t in TASKS})
    before = [p.stride() for p in signal.parameters()]
    assert [p.stride() for p in accelerate(signal, channels_last=True).parameters()] == before  # 1-D: unchanged


def test_without_options_the_model_is_returned_unchanged() -> None:
    model = lenet()
    strides = [p.stride() for p in model.parameters()]
    assert accelerate(model) is model and [p.stride() for p in model.parameters()] == strides


@pytest.mark.parametrize("make", [
    EqualWeighting,
    lambda tasks: MGDA(tasks, mode="rep"),
    lambda tasks: MGDA(tasks, mode="params", jacobian="batched"),
    lambda tasks: PCGrad(tasks, mode="params", jacobian="loop"),
], ids=["ew", "mgda-rep", "mgda-params-batched", "pcgrad-params-loop"])
def test_channels_last_gives_the_same_step(make: Callable[[list[str]], torch.nn.Module]) -> None:
    plain = lenet()
    fast = accelerate(copy.deepcopy(plain), channels_last=True)
    x = torch.randn(4, 1, 28, 28)
    for task, output in plain(x).items():
        torch.testing.assert_close(fast(x)[task], output, rtol=1e-4, atol=1e-5)
    expected_weights, expected = step(plain, make(TASKS))
    weights, grads = step(fast, make(TASKS))
    torch.testing.assert_close(weights, expected_weights, rtol=1e-4, atol=1e-5)
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)
