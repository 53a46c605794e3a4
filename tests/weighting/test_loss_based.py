"""DWA, RLW, inverse-loss, loss-ratio, GLS and FAMO on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.dwa import DynamicWeightAverage
from mtl_train.weighting.famo import FAMO
from mtl_train.weighting.gls import GeometricLossStrategy
from mtl_train.weighting.inverse_loss import InverseLossWeighting
from mtl_train.weighting.loss_ratio import LossRatioWeighting
from mtl_train.weighting.rlw import RandomLossWeighting


def squares(a: float, b: float) -> tuple[torch.nn.Parameter, torch.Tensor]:
    """theta = (sqrt a, sqrt b); L = (theta_0^2, theta_1^2) = (a, b), grad L_t = 2 theta_t."""
    theta = torch.nn.Parameter(torch.tensor([math.sqrt(a), math.sqrt(b)]))
    return theta, theta**2


def ctx(recompute=None) -> StepContext:
    return StepContext(model=None, step=0, scale=lambda loss: loss, recompute_losses=recompute)


# --- DWA -------------------------------------------------------------------------------------------------------


def test_dwa_weights_are_one_for_the_first_two_epochs() -> None:
    dwa = DynamicWeightAverage(["a", "b"])
    for epoch_means in (None, [2.0, 4.0]):
        if epoch_means is not None:
            dwa.after_epoch(0, torch.tensor(epoch_means))
        theta, losses = squares(1.0, 4.0)
        assert dwa.backward(losses, ctx()).tolist() == [1.0, 1.0]
        assert theta.grad.tolist() == pytest.approx([2.0, 4.0])


def test_dwa_hand_computed() -> None:
    """Epoch means (2, 4) then (1, 4): w = (0.5, 1); lambda = 2 softmax((0.25, 0.5))
    = 2 (e^0.25, e^0.5) / (e^0.25 + e^0.5) = (0.875647, 1.124353)."""
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0)
    dwa.after_epoch(0, torch.tensor([2.0, 4.0]))
    dwa.after_epoch(1, torch.tensor([1.0, 4.0]))
    expected = [2 * math.exp(0.25) / (math.exp(0.25) + math.exp(0.5)), 2 * math.exp(0.5) / (math.exp(0.25) + math.exp(0.5))]
    assert expected == pytest.approx([0.875647, 1.124353], abs=1e-6)
    theta, losses = squares(1.0, 4.0)
    weights = dwa.backward(losses, ctx())
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert theta.grad.tolist() == pytest.approx([expected[0] * 2.0, expected[1] * 4.0], rel=1e-6)
    # a third epoch uses only the last two means: (1, 4) then (1, 2) -> w = (1, 0.5)
    dwa.after_epoch(2, torch.tensor([1.0, 2.0]))
    assert dwa.weights.tolist() == pytest.approx(list(reversed(expected)), rel=1e-6)


def test_dwa_state_dict_round_trip_and_perfectly_fitted_task() -> None:
    """Task a's epoch mean is exactly 0 (reachable: a float32 cross-entropy whose true logit leads by 20 is 0), so its
    ratio is 1 instead of 0/0: w = (1, 0.5), lambda = 2 softmax((0.5, 0.25))."""
    assert torch.nn.functional.cross_entropy(torch.tensor([[20.0, 0.0]]), torch.tensor([0])).item() == 0.0
    dwa = DynamicWeightAverage(["a", "b"])
    dwa.after_epoch(0, torch.tensor([0.0, 4.0]))
    dwa.after_epoch(1, torch.tensor([3.0, 2.0]))
    restored = DynamicWeightAverage(["a", "b"])
    restored.load_state_dict(dwa.state_dict())
    expected = [2 * math.exp(0.5) / (math.exp(0.5) + math.exp(0.25)), 2 * math.exp(0.25) / (math.exp(0.5) + math.exp(0.25))]
    assert restored.weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert int(restored.epochs_seen) == 2


def test_dwa_rejects_bad_temperature() -> None:
    with pytest.raises(ConfigError, match="weighting.temperature"):
        DynamicWeightAverage(["a"], temperature=0.0)


# --- RLW -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_weights_on_the_simplex_differ_per_step_and_follow_the_seed(distribution: str) -> None:
    def draws(seed: int) -> list[list[float]]:
        rlw = RandomLossWeighting(["a", "b", "c"], distribution=distribution, seed=seed)
        out = []
        for _ in range(5):
            theta = torch.nn.Parameter(torch.ones(3))
            weights = rlw.backward(theta * torch.tensor([1.0, 2.0, 3.0]), ctx())
            assert theta.grad.tolist() == pytest.approx((weights * torch.tensor([1.0, 2.0, 3.0])).tolist())
            assert (weights > 0).all() and weights.sum().item() == pytest.approx(1.0, abs=1e-6)
            out.append(weights.tolist())
        return out

    first = draws(0)
    assert len({tuple(w) for w in first}) == 5
    assert draws(0) == first
    assert draws(1) != first


def test_rlw_normal_is_softmax_of_a_standard_normal_draw() -> None:
    eps = torch.randn(2, generator=torch.Generator().manual_seed(7))
    theta, losses = squares(1.0, 4.0)
    weights = RandomLossWeighting(["a", "b"], seed=7).backward(losses, ctx())
    assert weights.tolist() == pytest.approx(torch.softmax(eps, 0).tolist())


def test_rlw_state_dict_restores_the_generator() -> None:
    rlw = RandomLossWeighting(["a", "b"], seed=3)
    rlw.backward(squares(1.0, 4.0)[1], ctx())
    state = rlw.state_dict()
    assert "_extra_state" in state
    expected = [rlw.backward(squares(1.0, 4.0)[1], ctx()).tolist() for _ in range(3)]
    restored = RandomLossWeighting(["a", "b"], seed=99)
    restored.load_state_dict(state)
    assert [restored.backward(squares(1.0, 4.0)[1], ctx()).tolist() for _ in range(3)] == expected


def test_rlw_rejects_unknown_distribution() -> None:
    with pytest.raises(ConfigError, match="weighting.distribution"):
        RandomLossWeighting(["a"], distribution="uniform")


# --- inverse loss ----------------------------------------------------------------------------------------------


def test_inverse_loss_hand_computed() -> None:
    """L = (1, 4): 1/L = (1, 0.25), sum 1.25 -> w = 2 (0.8, 0.2) = (1.6, 0.4); every w_t L_t = 1.6."""
    theta, losses = squares(1.0, 4.0)
    weights = InverseLossWeighting(["a", "b"]).backward(losses, ctx())
    assert weights.tolist() == pytest.approx([1.6, 0.4])
    assert theta.grad.tolist() == pytest.approx([1.6 * 2.0, 0.4 * 4.0])


def test_inverse_loss_leaves_switched_off_tasks_out() -> None:
    theta, losses = squares(1.0, 4.0)
    weights = InverseLossWeighting(["a", "b", "c"]).backward(torch.cat([losses, torch.zeros(1)]), ctx())
    assert weights.tolist() == pytest.approx([1.6, 0.4, 0.0])
    assert InverseLossWeighting(["a"]).backward(torch.zeros(1, requires_grad=True), ctx()).tolist() == [0.0]


# --- loss ratio ------------------------------------------------------------------------------------------------


def test_loss_ratio_worked_example() -> None:
    """L(0) = (1, 4): w ∝ (1/1, 1/4) -> (1.6, 0.4). Then L = (0.5, 4): Lt = (0.5, 1), w ∝ (0.5, 0.25) -> (4/3, 2/3)."""
    weighting = LossRatioWeighting(["a", "b"], alpha=1.0)
    theta, losses = squares(1.0, 4.0)
    assert weighting.backward(losses, ctx()).tolist() == pytest.approx([1.6, 0.4])
    assert weighting.initial_losses.tolist() == pytest.approx([1.0, 4.0])
    theta, losses = squares(0.5, 4.0)
    weights = weighting.backward(losses, ctx())
    assert weights.tolist() == pytest.approx([4 / 3, 2 / 3])
    assert theta.grad.tolist() == pytest.approx([4 / 3 * 2 * math.sqrt(0.5), 2 / 3 * 4.0])
    assert weighting.initial_losses.tolist() == pytest.approx([1.0, 4.0])  # L(0) is kept


def test_loss_ratio_alpha_zero_is_initial_loss_normalisation() -> None:
    weighting = LossRatioWeighting(["a", "b"], alpha=0.0)
    weighting.backward(squares(1.0, 4.0)[1], ctx())
    assert weighting.backward(squares(0.5, 4.0)[1], ctx()).tolist() == pytest.approx([1.6, 0.4])


def test_loss_ratio_records_a_switched_off_task_when_it_starts() -> None:
    weighting = LossRatioWeighting(["a", "b"])
    assert weighting.backward(squares(1.0, 0.0)[1], ctx()).tolist() == pytest.approx([1.0, 0.0])
    # b's L(0) = 4 is taken at its first non-zero loss: Lt = (0.5, 1), w ∝ (0.5, 0.25) -> (4/3, 2/3)
    assert weighting.backward(squares(0.5, 4.0)[1], ctx()).tolist() == pytest.approx([4 / 3, 2 / 3])
    restored = LossRatioWeighting(["a", "b"])
    restored.load_state_dict(weighting.state_dict())
    assert restored.initial_losses.tolist() == pytest.approx([1.0, 4.0])


def test_loss_ratio_rejects_negative_alpha() -> None:
    with pytest.raises(ConfigError, match="weighting.alpha"):
        LossRatioWeighting(["a"], alpha=-1.0)


# --- GLS -------------------------------------------------------------------------------------------------------


def test_gls_hand_computed_and_matches_autograd() -> None:
    """L = (1, 4): total sqrt(1 * 4) = 2, weights L / (2 L_t) = (1, 0.25);
    as a function of theta, total = |theta_0 theta_1|, whose gradient at (1, 2) is (2, 1)."""
    theta, losses = squares(1.0, 4.0)
    weights = GeometricLossStrategy(["a", "b"]).backward(losses, ctx())
    assert weights.tolist() == pytest.approx([1.0, 0.25])
    assert theta.grad.tolist() == pytest.approx([2.0, 1.0])
    reference = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    torch.sqrt((reference**2).prod()).backward()
    assert theta.grad.tolist() == pytest.approx(reference.grad.tolist())


def test_gls_is_stable_for_many_tiny_losses_and_skips_zero_ones() -> None:
    losses = torch.full((50,), 1e-30, requires_grad=True)  # the plain product underflows to 0
    weights = GeometricLossStrategy([str(i) for i in range(50)]).backward(losses, ctx())
    assert torch.isfinite(losses.grad).all() and weights.tolist() == pytest.approx([1 / 50] * 50, rel=1e-4)
    theta, losses = squares(1.0, 4.0)
    weights = GeometricLossStrategy(["a", "b", "c"]).backward(torch.cat([losses, torch.zeros(1)]), ctx())
    assert weights.tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert theta.grad.tolist() == pytest.approx([2.0, 1.0])


# --- FAMO ------------------------------------------------------------------------------------------------------


def test_famo_first_step_hand_computed() -> None:
    """xi = 0: z = (1/2, 1/2); l = (1, 4): c = 0.5/1 + 0.5/4 = 0.625, weights z / (c l) = (0.8, 0.2)."""
    famo = FAMO(["a", "b"])
    theta, losses = squares(1.0, 4.0)
    weights = famo.backward(losses, ctx())
    assert weights.tolist() == pytest.approx([0.8, 0.2], rel=1e-6)
    assert theta.grad.tolist() == pytest.approx([0.8 * 2.0, 0.2 * 4.0], rel=1e-6)
    assert famo.logits.grad is None  # xi gets no gradient from the model loss
    assert famo.optimizer_groups() == []


def test_famo_logit_update_direction_and_adam_magnitude() -> None:
    """l goes (1, 4) -> (0.5, 4): delta = (log 2, 0); J_softmax^T delta = (log 2 / 4, -log 2 / 4).
    Adam's first step is lr * g / (|g| + eps) = lr * sign(g) (weight decay is 0 at xi = 0): task a, whose loss fell,
    loses weight: xi = (-0.025, 0.025)."""
    famo = FAMO(["a", "b"], lr=0.025, gamma=1e-3)
    famo.backward(squares(1.0, 4.0)[1], ctx())
    famo.after_optimizer_step(ctx(lambda: torch.tensor([0.5, 4.0])))
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025], rel=1e-6)
    assert famo.task_weights[0] < 0.5
    state = famo.optimizer.state[famo.logits]
    assert state["exp_avg"].tolist() == pytest.approx([0.1 * math.log(2) / 4, -0.1 * math.log(2) / 4], rel=1e-5)


def test_famo_checkpoint_round_trip_restores_the_inner_adam() -> None:
    famo = FAMO(["a", "b"])
    for new in ([0.5, 4.0], [0.4, 3.0]):
        famo.backward(squares(1.0, 4.0)[1], ctx())
        famo.after_optimizer_step(ctx(lambda new=new: torch.tensor(new)))
    restored = FAMO(["a", "b"])
    restored.load_state_dict(famo.state_dict())
    assert restored.logits.tolist() == famo.logits.tolist()
    saved, loaded = famo.optimizer.state[famo.logits], restored.optimizer.state[restored.logits]
    assert float(loaded["step"]) == 2.0
    assert loaded["exp_avg"].tolist() == saved["exp_avg"].tolist()
    assert loaded["exp_avg_sq"].tolist() == saved["exp_avg_sq"].tolist()
    for module in (famo, restored):  # the same next step
        module.backward(squares(1.0, 4.0)[1], ctx())
        module.after_optimizer_step(ctx(lambda: torch.tensor([0.9, 2.0])))
    assert restored.logits.tolist() == pytest.approx(famo.logits.tolist(), rel=1e-7)


def test_famo_min_losses_and_switched_off_tasks() -> None:
    """l* = (0, 2), l = (1, 4): gaps (1, 2), c = 0.5 + 0.25 = 0.75, weights (2/3, 1/3); a zero loss is left out."""
    famo = FAMO(["a", "b", "c"], min_losses={"b": 2.0})
    theta, losses = squares(1.0, 4.0)
    weights = famo.backward(torch.cat([losses, torch.zeros(1)]), ctx())
    assert weights.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0], rel=1e-6)
    famo.after_optimizer_step(ctx(lambda: torch.tensor([1.0, 4.0, 0.0])))  # no change: only weight decay (0 at xi=0)
    assert famo.logits.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)


def test_famo_keeps_a_switched_off_task_logit() -> None:
    """xi = (0, 0, 1), task c off; a's loss goes 1 -> 0.5: delta = (log 2, 0, 0). The softmax runs over a and b only,
    z = (1/2, 1/2), so J^T delta = (log 2 / 4, -log 2 / 4, 0) and Adam moves a and b by -/+ lr; c's logit stays 1
    (Adam's weight decay alone would have moved it by lr)."""
    famo = FAMO(["a", "b", "c"], lr=0.025, gamma=1e-3)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.0, 0.0, 1.0]))
    famo.backward(torch.cat([squares(1.0, 4.0)[1], torch.zeros(1)]), ctx())
    famo.after_optimizer_step(ctx(lambda: torch.tensor([0.5, 4.0, 0.0])))
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025, 1.0], rel=1e-6)
    exp_avg = famo.optimizer.state[famo.logits]["exp_avg"]
    assert exp_avg[:2].tolist() == pytest.approx([0.1 * math.log(2) / 4, -0.1 * math.log(2) / 4], rel=1e-5)


def test_famo_every_task_off_is_finite() -> None:
    famo = FAMO(["a", "b"])
    theta = torch.nn.Parameter(torch.ones(2))
    weights = famo.backward(theta * 0.0, ctx())
    assert weights.tolist() == [0.0, 0.0] and theta.grad.tolist() == [0.0, 0.0]
    famo.after_optimizer_step(ctx(lambda: torch.zeros(2)))
    assert famo.logits.tolist() == [0.0, 0.0]


def test_dwa_switched_off_task_gets_weight_zero() -> None:
    """Epoch means (2, 4) then (1, 4) give weights (0.875647, 1.124353); in a step where b's loss is 0 (switched off)
    the weights are (0.875647, 0)."""
    dwa = DynamicWeightAverage(["a", "b"])
    dwa.after_epoch(0, torch.tensor([2.0, 4.0]))
    dwa.after_epoch(1, torch.tensor([1.0, 4.0]))
    theta, losses = squares(1.0, 4.0)
    weights = dwa.backward(losses * torch.tensor([1.0, 0.0]), ctx())
    assert weights.tolist() == pytest.approx([0.875647, 0.0], abs=1e-6)
    assert theta.grad.tolist() == pytest.approx([0.875647 * 2.0, 0.0], abs=1e-5)


def test_famo_needs_recompute_losses_and_checks_its_config() -> None:
    famo = FAMO(["a", "b"])
    famo.backward(squares(1.0, 4.0)[1], ctx())
    with pytest.raises(RuntimeError, match="recompute_losses"):
        famo.after_optimizer_step(ctx())
    with pytest.raises(ConfigError, match="weighting.min_losses"):
        FAMO(["a", "b"], min_losses=[0.0])
    with pytest.raises(ConfigError, match="weighting.gamma"):
        FAMO(["a", "b"], gamma=-1.0)
