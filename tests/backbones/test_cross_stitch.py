"""Cross-stitch networks (Misra et al., CVPR 2016): unit initialisation, mixing, and the parameter split."""

from __future__ import annotations

import pytest
import torch

from mtl_train.backbones.cross_stitch import CrossStitchBackbone, CrossStitchUnit
from mtl_train.errors import ConfigError


def cross_stitch(tasks: list[str], **kwargs) -> CrossStitchBackbone:
    torch.manual_seed(0)
    return CrossStitchBackbone(tasks, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 6), kernel_size=3,
                               **kwargs)


def test_alphas_initialised_with_rows_summing_to_one() -> None:
    two = cross_stitch(["a", "b"])
    assert list(two.units) == ["0", "1"]  # a unit after every block by default
    assert two.units["1"].alpha.shape == (2, 2, 6)
    assert torch.allclose(two.units["1"].alpha[:, :, 3], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    three = cross_stitch(["a", "b", "c"])
    expected = torch.full((3, 3), 0.05).fill_diagonal_(0.9)
    assert all(torch.allclose(three.units["0"].alpha[:, :, c], expected) for c in range(4))
    custom = cross_stitch(["a", "b"], alpha_same=0.8, alpha_diff=0.05)
    assert torch.allclose(custom.units["0"].alpha[:, :, 0], torch.tensor([[0.8, 0.05], [0.05, 0.8]]))


def test_mixing_hand_computed() -> None:
    """x_a = (1, 2), x_b = (10, 20) over 2 channels; channel 0 alphas [[0.9, 0.1], [0.2, 0.8]], channel 1
    [[1, 0], [0.5, 0.5]]: out_a = (0.9 + 1, 2), out_b = (0.2 + 8, 1 + 10)."""
    unit = CrossStitchUnit(2, 2, 0.9, 0.1)
    with torch.no_grad():
        unit.alpha.copy_(torch.tensor([[[0.9, 1.0], [0.1, 0.0]], [[0.2, 0.5], [0.8, 0.5]]]))
    x = torch.tensor([[1.0, 2.0], [10.0, 20.0]]).view(2, 1, 2, 1)  # (k, B, C, L)
    out = unit(x)
    assert out.shape == (2, 1, 2, 1)
    assert torch.allclose(out.view(2, 2), torch.tensor([[1.9, 2.0], [8.2, 11.0]]))


def test_identity_alphas_make_the_towers_independent() -> None:
    backbone = cross_stitch(["a", "b"])
    with torch.no_grad():
        for unit in backbone.units.values():
            unit.alpha.copy_(torch.eye(2).unsqueeze(-1).expand_as(unit.alpha))
    x = torch.randn(5, 1, 16)
    z = backbone.encode(x)
    loss_b = backbone.branch("b", z, x).pow(2).mean()
    tower_a, tower_b = list(backbone.towers[0].parameters()), list(backbone.towers[1].parameters())
    grads_a = torch.autograd.grad(loss_b, tower_a, retain_graph=True, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads_a)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss_b, tower_b))


def test_default_init_mixes_the_towers() -> None:
    backbone = cross_stitch(["a", "b"])
    x = torch.randn(5, 1, 16)
    loss_b = backbone.branch("b", backbone.encode(x), x).pow(2).mean()
    conv_a = backbone.towers[0][0][0].weight
    assert torch.autograd.grad(loss_b, conv_a)[0].abs().sum() > 0


def test_encode_stacks_the_final_activations() -> None:
    backbone = cross_stitch(["a", "b", "c"])
    x = torch.randn(5, 1, 16)
    z = backbone.encode(x)
    assert z.shape == (3, 5, 6, 4)  # (k, B, C, 16 / 4)
    assert torch.equal(backbone.branch("c", z, x), z[2])
    assert backbone.shares_representation is False


def test_parameter_split_follows_the_last_unit() -> None:
    every = cross_stitch(["a", "b"])
    assert {id(p) for p in every.shared_parameters()} == {id(p) for p in every.parameters()}
    assert every.task_parameters("a") == []
    last = list(every.last_shared_layer().parameters())
    assert [p.shape for p in last] == [(6, 4, 3), (6, 4, 3)]

    first_only = cross_stitch(["a", "b"], stitch_after=[0])
    block_1 = list(first_only.towers[1][1].parameters())
    assert [id(p) for p in first_only.task_parameters("b")] == [id(p) for p in block_1]
    shared = {id(p) for p in first_only.shared_parameters()}
    task = {id(p) for t in ("a", "b") for p in first_only.task_parameters(t)}
    assert not shared & task and shared | task == {id(p) for p in first_only.parameters()}
    assert [p.shape for p in first_only.last_shared_layer().parameters()] == [(4, 1, 3), (4, 1, 3)]
    x = torch.randn(5, 1, 16)
    z = first_only.encode(x)
    assert z.shape == (2, 5, 4, 8)  # after block 0 and its unit
    assert first_only.branch("b", z, x).shape == (5, 6, 4)  # through tower b's block 1


@pytest.mark.parametrize("stitch_after", [[], [2], [-1]])
def test_bad_stitch_after_is_a_config_error(stitch_after: list[int]) -> None:
    with pytest.raises(ConfigError, match="backbone.stitch_after"):
        cross_stitch(["a", "b"], stitch_after=stitch_after)
