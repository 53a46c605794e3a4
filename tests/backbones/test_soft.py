"""Soft parameter sharing (Duong et al., ACL 2015): towers, the L2 penalty and its gradient."""

from __future__ import annotations

import pytest
import torch

from mtl_train.backbones.soft import SoftSharingBackbone
from mtl_train.errors import ConfigError


def soft(tasks: list[str], strength: float = 0.1, channels: tuple[int, ...] = (2,),
         kernel_size: int = 1) -> SoftSharingBackbone:
    torch.manual_seed(0)
    return SoftSharingBackbone(tasks, in_channels=1, input_size=(4,), spatial_dims=1, channels=channels,
                               kernel_size=kernel_size, strength=strength)


def flat(tower: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in tower.parameters()])


def test_penalty_hand_computed() -> None:
    """Towers a, b, c of one block: conv kernels (1, 2), (0, 0), (1, 0); BatchNorm weights all 1; BN biases (0, 0),
    (0, 0), (0.5, 0). Pairs: ab 1 + 4 = 5, ac 0 + 4 + bias 0.25 = 4.25, bc 1 + 0.25 = 1.25: 10.5 * 0.1 = 1.05."""
    backbone = soft(["a", "b", "c"], strength=0.1)
    kernels = [[1.0, 2.0], [0.0, 0.0], [1.0, 0.0]]
    biases = [[0.0, 0.0], [0.0, 0.0], [0.5, 0.0]]
    with torch.no_grad():
        for tower, kernel, bias in zip(backbone.towers, kernels, biases):
            conv, norm = tower[0][0], tower[0][1]
            conv.weight.copy_(torch.tensor(kernel).view(2, 1, 1))
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.tensor(bias))
    assert backbone.penalty().item() == pytest.approx(1.05)
    assert backbone.penalty_name == "soft_l2"


def test_penalty_gradient_is_twice_strength_times_the_difference() -> None:
    backbone = soft(["a", "b"], strength=0.3, channels=(3, 4), kernel_size=3)
    backbone.penalty().backward()
    a, b = backbone.towers
    grad_a = torch.cat([p.grad.reshape(-1) for p in a.parameters()])
    assert torch.allclose(grad_a, 2 * 0.3 * (flat(a) - flat(b)).detach(), atol=1e-6)
    grad_b = torch.cat([p.grad.reshape(-1) for p in b.parameters()])
    assert torch.allclose(grad_b, -grad_a, atol=1e-6)


def test_minimising_the_penalty_pulls_the_towers_together() -> None:
    """SGD on the penalty alone: d <- d (1 - 4 lr strength), i.e. x0.6 per step with lr 0.1, strength 1."""
    backbone = soft(["a", "b"], strength=1.0, channels=(3, 4), kernel_size=3)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    a, b = backbone.towers
    distances = []
    for _ in range(40):
        distances.append((flat(a) - flat(b)).norm().item())
        optimizer.zero_grad()
        backbone.penalty().backward()
        optimizer.step()
    assert distances[0] > 1.0
    assert all(later < earlier for earlier, later in zip(distances, distances[1:]))
    assert distances[1] == pytest.approx(0.6 * distances[0], rel=1e-4)
    assert distances[-1] < 1e-6 * distances[0]


def test_towers_start_independent_and_encode_stacks_them() -> None:
    backbone = soft(["a", "b", "c"], channels=(4, 8), kernel_size=3)
    a, b = backbone.towers[0], backbone.towers[1]
    assert not torch.equal(a[0][0].weight, b[0][0].weight)
    assert backbone.penalty().item() > 0
    x = torch.randn(5, 1, 4)
    z = backbone.encode(x)
    assert z.shape == (3, 5, 8, 1)  # (k, B, C, L / 4)
    backbone.eval()
    assert torch.equal(backbone.branch("b", backbone.encode(x), x), b(x))
    assert backbone.shares_representation is False


def test_shared_parameters_are_the_towers_and_last_layer_holds_every_towers_last_conv() -> None:
    backbone = soft(["a", "b"], channels=(4, 8), kernel_size=3)
    assert {id(p) for p in backbone.shared_parameters()} == {id(p) for p in backbone.parameters()}
    assert backbone.task_parameters("a") == []
    last = list(backbone.last_shared_layer().parameters())
    assert [p.shape for p in last] == [(8, 4, 3), (8, 4, 3)]
    assert last[0] is backbone.towers[0][1][0].weight and last[1] is backbone.towers[1][1][0].weight


def test_negative_strength_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backbone.strength"):
        soft(["a", "b"], strength=-1.0)
