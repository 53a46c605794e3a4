"""Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019): sizes, what each attention mask sees, the
parameter split, and gradient methods on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbone_checks import SMOKE_WEIGHTINGS, check_gradient_methods, classifier, train_two_steps

from mtl_train.backbones.mtan import AttentionModule, MTANBackbone
from mtl_train.errors import ConfigError

TASKS = ["a", "b"]


def mtan(spatial_dims: int = 1, tasks: list[str] = TASKS) -> MTANBackbone:
    torch.manual_seed(0)
    size = (16,) if spatial_dims == 1 else (8, 8)
    return MTANBackbone(tasks, in_channels=2, input_size=size, spatial_dims=spatial_dims, channels=(3, 4),
                        kernel_size=3)


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_parameter_counts_match_the_formula() -> None:
    """in 2, channels (3, 4), kernel 3 (K = 3 in 1-D, 9 in 2-D):
    trunk K*2*3 + K*9 + 12 + K*3*4 + K*16 + 16, f K*3*4 + 8, attention per task 3*3 + 9 + 18 + 8*4 + 16 + 24 = 108."""
    for dims, K in ((1, 3), (2, 9)):
        backbone = mtan(dims)
        assert count(backbone.trunk.parameters()) == K * 6 + K * 9 + 12 + K * 12 + K * 16 + 16
        assert count(backbone.shared_blocks.parameters()) == K * 12 + 8
        assert [count(backbone.task_parameters(t)) for t in TASKS] == [108, 108]
        assert count(backbone.parameters()) == (157 if dims == 1 else 415) + (44 if dims == 1 else 116) + 2 * 108


def test_attention_module_sizes_of_the_resnet18_layout() -> None:
    """Stage (in, out) = (64, 64), (256, 128), (512, 256), (1024, 512), as LibMTL's MTAN on ResNet-18: 1,046,144
    parameters per task (c_in c + c^2 + 6 c per stage)."""
    sizes = [(64, 64), (256, 128), (512, 256), (1024, 512)]
    assert sum(count(AttentionModule(i, o, 2).parameters()) for i, o in sizes) == 1_046_144


@pytest.mark.parametrize("spatial_dims", [1, 2])
def test_masks_lie_in_the_unit_interval_with_each_stages_shape(spatial_dims: int) -> None:
    backbone = mtan(spatial_dims).eval()
    x = torch.randn(5, 2, *((16,) if spatial_dims == 1 else (8, 8)))
    masks = backbone.attention_masks(x)
    spatial = [(16,), (8,)] if spatial_dims == 1 else [(8, 8), (4, 4)]
    for task in TASKS:
        assert [m.shape for m in masks[task]] == [(5, 3, *spatial[0]), (5, 4, *spatial[1])]
        assert all(((m > 0) & (m < 1)).all() for m in masks[task])
    assert backbone.encode(x).shape == (2, 5, 4, *((4,) if spatial_dims == 1 else (2, 2)))  # (k, B, C, size / 4)


def test_the_first_mask_sees_the_stages_first_layer_only() -> None:
    """a_t,0 = Att(u_0): changing the stage's second convolution (p_0) leaves it, but not a_t,1 (which reads
    f(a_t,0 * p_0)), unchanged."""
    backbone = mtan().eval()
    x = torch.randn(4, 2, 16)
    before = backbone.attention_masks(x)
    with torch.no_grad():
        backbone.trunk[0][1][0].weight.mul_(-2.0)
    after = backbone.attention_masks(x)
    for task in TASKS:
        assert torch.equal(before[task][0], after[task][0])
        assert not torch.allclose(before[task][1], after[task][1])


def test_later_masks_see_the_tasks_own_previous_features() -> None:
    """Changing task a's stage-0 attention changes a's stage-1 mask and nothing of task b."""
    backbone = mtan().eval()
    x = torch.randn(4, 2, 16)
    before = backbone.attention_masks(x)
    with torch.no_grad():
        backbone.attention["a"][0].layers[0].weight.mul_(-3.0)
    after = backbone.attention_masks(x)
    assert not torch.allclose(before["a"][1], after["a"][1])
    assert all(torch.equal(m, n) for m, n in zip(before["b"], after["b"]))


def test_masks_of_one_give_the_shared_trunk() -> None:
    """Every mask saturated at 1 (the attention's last BatchNorm bias at 50): each task reads the trunk's own
    output MaxPool(p_S-1), i.e. hard sharing."""
    backbone = mtan().eval()
    with torch.no_grad():
        for modules in backbone.attention.values():
            for module in modules:
                module.layers[4].bias.fill_(50.0)
    x = torch.randn(3, 2, 16)
    h = x
    for first, second in backbone.trunk:
        h = backbone.pool(second(first(h)))
    z = backbone.encode(x)
    assert torch.equal(z[0], h) and torch.equal(z[1], h)


def test_parameter_split_and_which_gradients_reach_what() -> None:
    backbone = mtan()
    model = classifier(backbone, TASKS)  # checks that shared + task parameters partition the model
    assert {id(p) for p in backbone.shared_parameters()} == {
        id(p) for p in [*backbone.trunk.parameters(), *backbone.shared_blocks.parameters()]}
    assert backbone.shares_representation is False
    assert backbone.last_shared_layer() is backbone.trunk[-1][1][0]
    x = torch.randn(4, 2, 16)
    loss_a = model(x)["a"].sum()
    own, other = backbone.task_parameters("a"), backbone.task_parameters("b")
    grads = torch.autograd.grad(loss_a, [*own, *other, *backbone.shared_blocks.parameters()], allow_unused=True)
    assert grads[0].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in grads[len(own):len(own) + len(other)])  # z stacks both
    assert grads[-3].abs().sum() > 0  # the shared f block's convolution


def test_gradient_methods_run_on_it() -> None:
    check_gradient_methods(lambda: classifier(mtan(tasks=["a", "b", "c"]), ["a", "b", "c"]), torch.randn(6, 2, 16))


@pytest.mark.parametrize("weighting", SMOKE_WEIGHTINGS)
def test_two_training_steps(weighting: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    train_two_steps("mtan1d", weighting, ["backbone.channels=[4,8]"], False, tmp_path, tiny_fashion_root)


@pytest.mark.parametrize(("settings", "match"), [
    (dict(input_size=(16,), spatial_dims=2), "spatial_dims=2 does not fit"),
    (dict(input_size=(4,), spatial_dims=1, channels=(3, 4, 5)), "downsamples by 8x"),
    (dict(input_size=(16,), spatial_dims=1, channels=()), "backbone.channels"),
])
def test_bad_settings_are_config_errors(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MTANBackbone(TASKS, in_channels=1, **settings)
