"""DSelect-k (Hazimeh et al., NeurIPS 2021): the smooth-step, the binary selectors, the gate on a hand-computed
example, k-selection, the penalty, and gradient methods on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbone_checks import SMOKE_WEIGHTINGS, check_gradient_methods, classifier, train_two_steps

from mtl_train.backbones.dselect_k import DSelectK, binary_codes, dselect_k_cnn, dselect_k_mlp, smooth_step
from mtl_train.errors import ConfigError

TASKS = ["a", "b"]


def static(num_experts: int, num_nonzeros: int = 2, **settings) -> DSelectK:
    torch.manual_seed(0)
    return dselect_k_mlp(TASKS, 1, (6,), num_experts=num_experts, num_nonzeros=num_nonzeros, gate="static",
                         hidden=(4,), **settings)


def set_gate(backbone: DSelectK, task: str, z: list[list[float]], alpha: list[float]) -> None:
    with torch.no_grad():
        backbone.gates[task].selector_logits.copy_(torch.tensor(z))
        backbone.gates[task].mixture_logits.copy_(torch.tensor(alpha))


def test_smooth_step() -> None:
    """S(t) = -2 t^3 / g^3 + 3 t / (2 g) + 1/2 on [-g/2, g/2], 0 and 1 outside: S_1(0.3) = -0.054 + 0.45 + 0.5."""
    t = torch.tensor([-2.0, -0.5, -0.2, 0.0, 0.3, 0.5, 2.0])
    assert torch.allclose(smooth_step(t, 1.0), torch.tensor([0.0, 0.0, 0.216, 0.5, 0.896, 1.0, 1.0]), atol=1e-6)
    assert torch.allclose(smooth_step(2 * t, 2.0), smooth_step(t, 1.0))


def test_binary_codes_most_significant_bit_first() -> None:
    assert binary_codes(4).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert binary_codes(3).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]  # code 11 unused
    assert binary_codes(5).shape == (8, 3)
    assert binary_codes(1).shape == (1, 0)


def test_gate_on_the_hand_computed_example() -> None:
    """n = 4, k = 2, gamma = 1, z1 = (0.3, -0.2), z2 = (-0.6, 0.1), alpha = (0.2, -0.1): S(z1) = (0.896, 0.216),
    S(z2) = (0, 0.648), r1 = (0.081536, 0.022464, 0.702464, 0.193536), r2 = (0.352, 0.648, 0, 0),
    softmax(alpha) = (0.574443, 0.425557), so q = (0.196634, 0.288666, 0.403525, 0.111175); the entropy of
    r1 and r2 sums to 1.504252."""
    backbone = static(4, entropy_weight=1.0)
    set_gate(backbone, "a", [[0.3, -0.2], [-0.6, 0.1]], [0.2, -0.1])
    x = torch.randn(3, 1, 6)
    r = backbone.gates["a"].selectors(torch.flatten(x, 1))
    assert torch.allclose(r[0], torch.tensor([[0.081536, 0.022464, 0.702464, 0.193536], [0.352, 0.648, 0, 0]]),
                          atol=1e-6)
    q = backbone.gate_weights("a", x)
    assert torch.allclose(q, torch.tensor([0.196634, 0.288666, 0.403525, 0.111175]).expand(3, 4), atol=1e-6)
    assert torch.allclose(q.sum(dim=1), torch.ones(3))
    set_gate(backbone, "b", [[0.3, -0.2], [-0.6, 0.1]], [0.2, -0.1])
    backbone.encode(x)
    assert backbone.penalty_name == "dselect_k"
    assert backbone.penalty().item() == pytest.approx(2 * 1.504252, abs=1e-5)  # two tasks, no unused code


def test_three_experts_lose_weight_to_the_unused_code_and_the_penalty_counts_it() -> None:
    """n = 3 on 2 bits: q = (0.196634, 0.288666, 0.403525) sums to 0.888825; selector 1 keeps 0.806464 of its
    weight on real experts, selector 2 all: penalty (1 / 0.806464 - 1) + (1 / 1 - 1) = 0.239981 per task."""
    backbone = static(3)
    for task in TASKS:
        set_gate(backbone, task, [[0.3, -0.2], [-0.6, 0.1]], [0.2, -0.1])
    x = torch.randn(2, 1, 6)
    q = backbone.gate_weights("a", x)
    assert torch.allclose(q[0], torch.tensor([0.196634, 0.288666, 0.403525]), atol=1e-6)
    assert q[0].sum().item() == pytest.approx(0.888825, abs=1e-6)
    backbone.encode(x)
    assert backbone.penalty().item() == pytest.approx(2 * 0.239981, abs=1e-5)


def test_saturated_selectors_keep_exactly_k_experts() -> None:
    """n = 8, k = 2: selector logits beyond +-gamma/2 spelling 101 and 010 put all weight on experts 5 and 2, in the
    proportions softmax(alpha)."""
    backbone = static(8)
    set_gate(backbone, "a", [[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]], [0.5, -0.5])
    q = backbone.gate_weights("a", torch.randn(4, 1, 6))[0]
    share = torch.softmax(torch.tensor([0.5, -0.5]), dim=0)
    expected = torch.zeros(8)
    expected[5], expected[2] = share[0], share[1]
    assert torch.allclose(q, expected, atol=1e-7)
    assert int((q > 0).sum()) == 2
    set_gate(backbone, "a", [[1.0, -1.0, 1.0], [1.0, -1.0, 1.0]], [0.5, -0.5])  # both select expert 5
    assert backbone.gate_weights("a", torch.randn(4, 1, 6))[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]


def test_one_selector_picks_one_expert() -> None:
    backbone = static(4, num_nonzeros=1)
    set_gate(backbone, "a", [[-0.7, 0.9]], [0.0])
    assert backbone.gate_weights("a", torch.randn(2, 1, 6))[0].tolist() == [0, 1, 0, 0]


def test_static_gates_start_near_uniform() -> None:
    """Initial selector logits within +-gamma/100 put every S(z_j) within 0.5 +- 0.015 (slope 3 / (2 gamma)), so
    every expert gets 1/4 within 0.02."""
    q = static(4).gate_weights("a", torch.randn(3, 1, 6))
    assert torch.allclose(q, torch.full_like(q, 0.25), atol=0.02)


def test_per_example_gates_sum_to_one() -> None:
    torch.manual_seed(0)
    backbone = dselect_k_cnn(TASKS, in_channels=2, input_size=(16,), spatial_dims=1, num_experts=4,
                             channels=(4, 6), kernel_size=3)
    x = torch.randn(7, 2, 16)
    for task in TASKS:
        q = backbone.gate_weights(task, x)
        assert q.shape == (7, 4)
        assert torch.allclose(q.sum(dim=1), torch.ones(7)) and (q > 0).all()
    assert backbone.penalty_name is None and backbone.penalty() is None  # 4 experts, no entropy term


def test_per_example_penalty_is_the_batch_mean_of_the_last_training_batch() -> None:
    torch.manual_seed(0)
    backbone = dselect_k_mlp(TASKS, 1, (6,), num_experts=3, hidden=(4,))
    with pytest.raises(RuntimeError, match="needs a training forward"):
        backbone.penalty()
    x = torch.randn(5, 1, 6)
    backbone.encode(x)
    expected = sum(gate.penalty(torch.flatten(x, 1), 1.0, 0.0).mean() for gate in backbone.gates.values())
    assert backbone.penalty().item() == pytest.approx(expected.item())
    backbone.penalty().backward()
    assert all(p.grad is not None for task in TASKS for p in backbone.gates[task].selector.parameters())
    assert all(p.grad is None for task in TASKS for p in backbone.gates[task].mixture.parameters())  # r only
    assert all(p.grad is None for p in backbone.shared_parameters())


def test_parameter_split_as_mmoe() -> None:
    backbone = static(4)
    classifier(backbone, TASKS)
    assert {id(p) for p in backbone.shared_parameters()} == {id(p) for p in backbone.experts.parameters()}
    assert [p.shape for p in backbone.task_parameters("a")] == [(2, 2), (2,)]  # static: k x m logits, k alphas
    per_example = dselect_k_mlp(TASKS, 1, (6,), num_experts=4, hidden=(4,))
    assert [p.shape for p in per_example.task_parameters("a")] == [(4, 6), (4,), (2, 6), (2,)]  # k m = 4 logits


def test_gradient_methods_run_on_it() -> None:
    def make():
        torch.manual_seed(0)
        return classifier(dselect_k_cnn(["a", "b", "c"], in_channels=2, input_size=(16,), spatial_dims=1,
                                        num_experts=3, channels=(4, 6), kernel_size=3), ["a", "b", "c"])
    check_gradient_methods(make, torch.randn(6, 2, 16))


@pytest.mark.parametrize("weighting", SMOKE_WEIGHTINGS)
def test_two_training_steps(weighting: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    """3 experts: the unused-code penalty is on, and logged as the losses.csv column dselect_k."""
    train_two_steps("dselect_k1d", weighting, ["backbone.channels=[4,8]", "backbone.num_experts=3"], True, tmp_path,
                    tiny_fashion_root)
    assert (tmp_path / "losses.csv").read_text().splitlines()[0] == "step,rhythm,denoise,dselect_k"


@pytest.mark.parametrize(("settings", "match"), [
    (dict(num_experts=3, num_nonzeros=4), "backbone.num_nonzeros must be between 1 and backbone.num_experts"),
    (dict(num_experts=3, num_nonzeros=0), "backbone.num_nonzeros"),
    (dict(gamma=0.0), "backbone.gamma"),
    (dict(gate="dense"), "backbone.gate must be one of per_example, static"),
    (dict(entropy_weight=-1.0), "backbone.unused_weight and backbone.entropy_weight must be >= 0"),
])
def test_bad_settings_are_config_errors(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dselect_k_mlp(TASKS, 1, (6,), hidden=(4,), **settings)
