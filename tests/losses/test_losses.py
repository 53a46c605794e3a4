"""Cross-entropy and focal loss against hand computations; AMP dtypes; config validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtl_train.errors import ConfigError
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.losses.focal import FocalLoss

LOSS_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "loss"


def test_cross_entropy_class_weights_match_manual() -> None:
    # nll_0 = log(e^2 + e^1 + e^0) - 2 = 0.407606  (target 0, weight 1)
    # nll_1 = log(e^0 + e^1 + e^3) - 3 = 0.169846  (target 2, weight 3)
    # weighted mean (PyTorch convention) = (1 * 0.407606 + 3 * 0.169846) / (1 + 3) = 0.229286
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    target = torch.tensor([0, 2])
    nll_0 = math.log(math.exp(2) + math.exp(1) + 1) - 2
    nll_1 = math.log(1 + math.exp(1) + math.exp(3)) - 3
    loss = CrossEntropy(class_weights=[1.0, 2.0, 3.0])(logits, target)
    assert loss.item() == pytest.approx((nll_0 + 3 * nll_1) / 4)
    assert loss.item() == pytest.approx(0.229286, abs=1e-6)


def test_cross_entropy_label_smoothing_and_buffer() -> None:
    logits, target = torch.randn(6, 4), torch.randint(0, 4, (6,))
    expected = F.cross_entropy(logits, target, label_smoothing=0.2)
    assert torch.allclose(CrossEntropy(label_smoothing=0.2)(logits, target), expected)
    loss = CrossEntropy(class_weights=[1.0, 2.0])
    assert "class_weights" in dict(loss.named_buffers())
    assert loss.to(torch.float64).class_weights.dtype == torch.float64  # moves with the module


def test_focal_gamma_zero_equals_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=generator)
    target = torch.randint(0, 5, (8,), generator=generator)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    # with weights: the mean over elements of per-element weighted CE (not PyTorch's weight-sum mean)
    weights = [0.5, 1.0, 2.0, 3.0, 0.25]
    per_element = F.cross_entropy(logits, target, weight=torch.tensor(weights), reduction="none")
    assert torch.allclose(FocalLoss(gamma=0.0, class_weights=weights)(logits, target), per_element.mean())


def test_focal_gamma_two_hand_computed() -> None:
    # sample 0: logits [ln 3, 0], target 0 -> p_t = 3/4: FL = -(1/4)^2 ln(3/4) = 0.0179801
    # sample 1: logits [0, 0],    target 1 -> p_t = 1/2: FL = -(1/2)^2 ln(1/2) = 0.1732868
    # mean = 0.0956335; with alpha = [0.25, 0.75]: (0.25*0.0179801 + 0.75*0.1732868) / 2 = 0.0672301
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 1])
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(0.0956335, abs=1e-6)
    weighted = FocalLoss(gamma=2.0, class_weights=[0.25, 0.75])(logits, target)
    assert weighted.item() == pytest.approx(0.0672301, abs=1e-6)


def test_dense_inputs_match_flattened() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=generator)
    target = torch.randint(0, 3, (2, 4, 5), generator=generator)
    flat_logits, flat_target = logits.movedim(1, -1).reshape(-1, 3), target.reshape(-1)
    for loss in (CrossEntropy(class_weights=[1.0, 2.0, 0.5]), FocalLoss(gamma=2.0, class_weights=[1.0, 2.0, 0.5])):
        assert torch.allclose(loss(logits, target), loss(flat_logits, flat_target))
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", [CrossEntropy(class_weights=[1.0, 2.0, 3.0]), FocalLoss(gamma=2.0)])
def test_low_precision_logits_give_finite_float32(dtype: torch.dtype, loss: torch.nn.Module) -> None:
    logits = (torch.randn(4, 3, 6) * 30).to(dtype).requires_grad_()
    value = loss(logits, torch.randint(0, 3, (4, 6)))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_focal_saturated_logits_have_finite_gradient() -> None:
    # p_t == 1 exactly: d/dx x^0.5 at x = 0 is infinite; the 1 - p_t floor keeps the gradient finite
    logits = torch.tensor([[100.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma=0.5)(logits, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="loss.gamma must be >= 0, got -1"):
        FocalLoss(gamma=-1)
    for bad in ([1.0, 0.0], [1.0, -2.0], [], [1.0, float("nan")]):
        with pytest.raises(ConfigError, match="loss.class_weights must be a non-empty list of positive"):
            CrossEntropy(class_weights=bad)
        with pytest.raises(ConfigError, match="loss.class_weights"):
            FocalLoss(class_weights=bad)
    with pytest.raises(ConfigError, match=r"loss.label_smoothing must be in \[0, 1\), got 1.5"):
        CrossEntropy(label_smoothing=1.5)
    logits, target = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)
    for loss in (CrossEntropy(class_weights=[1.0, 1.0]), FocalLoss(class_weights=[1.0, 1.0])):
        with pytest.raises(ConfigError, match="loss.class_weights has 2 entries but the logits have 3 classes"):
            loss(logits, target)
    with pytest.raises(ValueError, match="focal loss expects"):
        FocalLoss()(logits, torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cross_entropy", CrossEntropy),
        ("focal", FocalLoss),
        ("mse", torch.nn.MSELoss),
        ("l1", torch.nn.L1Loss),
        ("huber", torch.nn.HuberLoss),
    ],
)
def test_loss_configs_instantiate(name: str, cls: type[torch.nn.Module]) -> None:
    loss = instantiate(OmegaConf.load(LOSS_CONFIGS / f"{name}.yaml"))
    assert type(loss) is cls
