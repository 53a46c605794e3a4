"""EW, static and uncertainty weighting on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.static import StaticWeighting
from mtl_train.weighting.uw import UncertaintyWeighting, uncertainty_weights


def two_losses() -> tuple[torch.nn.Parameter, torch.Tensor]:
    """theta = (1, 2); L_a = theta_0^2 = 1 (grad (2, 0)); L_b = 3 * theta_1 = 6 (grad (0, 3))."""
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    return theta, torch.stack([theta[0] ** 2, 3 * theta[1]])


def ctx() -> StepContext:
    return StepContext(model=None, step=0, scale=lambda loss: loss)  # loss-only methods never touch the model


def test_ew_sums_the_losses() -> None:
    theta, losses = two_losses()
    weights = EqualWeighting(["a", "b"]).backward(losses, ctx())
    assert weights.tolist() == [1.0, 1.0]
    assert theta.grad.tolist() == [2.0, 3.0]


def test_static_applies_named_weights_and_defaults() -> None:
    theta, losses = two_losses()
    weights = StaticWeighting(["a", "b"], {"b": 0.1}, default_weight=2.0).backward(losses, ctx())
    assert weights.tolist() == pytest.approx([2.0, 0.1])
    assert theta.grad.tolist() == pytest.approx([4.0, 0.3])


def test_static_accepts_a_list_in_task_order() -> None:
    theta, losses = two_losses()
    StaticWeighting(["a", "b"], [0.5, 1.0]).backward(losses, ctx())
    assert theta.grad.tolist() == pytest.approx([1.0, 3.0])


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"c": 1.0}, "unknown tasks ['c']"), ([1.0], "has 1 values but there are 2 tasks"), ({"a": -1.0}, ">= 0")],
)
def test_static_rejects_bad_weights(weights, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        StaticWeighting(["a", "b"], weights)


def test_uw_loss_and_weights_hand_computed() -> None:
    """s = (0, log 2), L = (1, 6). Regression form: weights 0.5 e^{-s} = (0.5, 0.25),
    total = 0.5*1 + 0.25*6 + 0.5*(0 + log 2); d total / d s_t = -w_t L_t + 0.5 = (0, -1)."""
    theta, losses = two_losses()
    uw = UncertaintyWeighting(["a", "b"], form="regression")
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor([0.0, math.log(2.0)]))
    weights = uw.backward(losses, ctx())
    assert weights.tolist() == pytest.approx([0.5, 0.25])
    assert uw.log_variances.grad.tolist() == pytest.approx([0.0, -1.0])
    assert theta.grad.tolist() == pytest.approx([0.5 * 2.0, 0.25 * 3.0])


def test_uw_classification_form_weights() -> None:
    assert uncertainty_weights(torch.tensor([0.0, math.log(4.0)]), "classification").tolist() == pytest.approx([1.0, 0.25])


@pytest.mark.parametrize(("form", "factor"), [("regression", 1.0), ("classification", 2.0)])
def test_uw_fixed_point(form: str, factor: float) -> None:
    """Minimising over s with the losses held fixed: exp(s_t) -> L_t (regression form), 2 L_t (classification)."""
    losses = torch.tensor([0.3, 4.0])
    uw = UncertaintyWeighting(["a", "b"], form=form)
    optimizer = torch.optim.Adam(uw.parameters(), lr=0.05)
    for _ in range(2000):
        optimizer.zero_grad()
        uw.backward(losses, ctx())
        optimizer.step()
    assert torch.exp(uw.log_variances).tolist() == pytest.approx((factor * losses).tolist(), rel=1e-3)


def test_uw_rejects_unknown_form() -> None:
    with pytest.raises(ConfigError, match="weighting.form"):
        UncertaintyWeighting(["a"], form="poisson")


def test_learnable_weightings_give_their_own_optimizer_group() -> None:
    group = UncertaintyWeighting(["a", "b"], lr=0.025).optimizer_groups()[0]
    assert group["lr"] == 0.025 and group["weight_decay"] == 0.0 and len(group["params"]) == 1
    assert EqualWeighting(["a"]).optimizer_groups() == []
