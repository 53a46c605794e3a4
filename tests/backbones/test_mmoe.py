"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): gates, mixing, and which gradients reach which gate."""

from __future__ import annotations

import pytest
import torch

from mtl_train.backbones.mmoe import MMoEBackbone
from mtl_train.errors import ConfigError


def mmoe(num_experts: int = 3, spatial_dims: int = 1) -> MMoEBackbone:
    torch.manual_seed(0)
    size = (16,) if spatial_dims == 1 else (8, 8)
    return MMoEBackbone(["a", "b"], in_channels=2, input_size=size, spatial_dims=spatial_dims, num_experts=num_experts,
                        channels=(4, 6), kernel_size=3)


def test_gates_sum_to_one_per_sample() -> None:
    backbone = mmoe(num_experts=5)
    gates = backbone.gate_weights("a", 3 * torch.randn(7, 2, 16))
    assert gates.shape == (7, 5)
    assert torch.allclose(gates.sum(dim=1), torch.ones(7)) and (gates > 0).all()
    assert backbone.gates["a"].in_features == 2 * 16  # the flattened input


@pytest.mark.parametrize("spatial_dims", [1, 2])
def test_branch_is_the_gate_weighted_sum_of_the_experts(spatial_dims: int) -> None:
    backbone = mmoe(spatial_dims=spatial_dims).eval()
    x = torch.randn(4, 2, *((16,) if spatial_dims == 1 else (8, 8)))
    z = backbone.encode(x)
    assert z.shape == (4, 3, 6, *((4,) if spatial_dims == 1 else (2, 2)))  # (B, n, C, *spatial / 4)
    for task in ("a", "b"):
        gates = torch.softmax(backbone.gates[task](x.reshape(4, -1)), dim=1)
        expected = sum(gates[:, i].view(4, *[1] * (spatial_dims + 1)) * backbone.experts[i](x) for i in range(3))
        assert torch.allclose(backbone.branch(task, z, x), expected, atol=1e-6)


def test_task_gradient_reaches_its_own_gate_only() -> None:
    backbone = mmoe()
    x = torch.randn(4, 2, 16)
    loss_a = backbone.branch("a", backbone.encode(x), x).pow(2).mean()
    gate_a, gate_b = list(backbone.gates["a"].parameters()), list(backbone.gates["b"].parameters())
    grads = torch.autograd.grad(loss_a, gate_a + gate_b + backbone.shared_parameters(), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:2])
    assert all(g is None for g in grads[2:4])
    assert all(g is not None for g in grads[4:])  # every expert


def test_parameter_split_experts_shared_gates_per_task() -> None:
    backbone = mmoe()
    assert {id(p) for p in backbone.shared_parameters()} == {id(p) for p in backbone.experts.parameters()}
    assert [p.shape for p in backbone.task_parameters("b")] == [(3, 32), (3,)]
    assert backbone.shares_representation is True
    assert [p.shape for p in backbone.last_shared_layer().parameters()] == [(6, 4, 3)] * 3


def test_no_experts_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backbone.num_experts"):
        mmoe(num_experts=0)
