"""Sener & Koltun's MultiLeNet encoder: parameter count, flat features, split_depth and dense-head errors."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIG_DIR
from omegaconf import OmegaConf

from mtl_train.backbones.multi_lenet import multi_lenet
from mtl_train.errors import ConfigError
from mtl_train.heads.dense import DenseHead
from mtl_train.heads.reconstruction import ReconstructionHead
from mtl_train.utils.instantiate import instantiate

CONV1 = 1 * 10 * 5 * 5 + 10
CONV2 = 10 * 20 * 5 * 5 + 20
FC = 320 * 50 + 50


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_parameter_count_is_seners_network() -> None:
    backbone = multi_lenet(["left", "right"], in_channels=1, input_size=(28, 28))
    assert count(backbone.parameters()) == CONV1 + CONV2 + FC == 21_330
    assert count(backbone.shared_parameters()) == 21_330 and backbone.task_parameters("left") == []
    assert backbone.last_shared_layer() is backbone.shared[2][1]


def test_flat_features_for_28_and_36_pixel_inputs() -> None:
    torch.manual_seed(0)
    for size, flat in ((28, 320), (36, 720)):
        backbone = multi_lenet(["left", "right"], in_channels=1, input_size=(size, size))
        assert backbone.shared[2][1].in_features == flat
        x = torch.randn(4, 1, size, size)
        assert backbone.branch("left", backbone.encode(x), x).shape == (4, 50)
    assert backbone.out_channels == 50 and backbone.spatial_dims == 0


def test_channel_dropout_whole_channels_in_training_only() -> None:
    torch.manual_seed(0)
    backbone = multi_lenet(["a"], in_channels=1, input_size=(28, 28))
    dropout = backbone.shared[1][1]
    assert isinstance(dropout, torch.nn.Dropout2d) and dropout.p == 0.5
    x = torch.randn(2, 1, 28, 28)
    conv_out = backbone.shared[1][0](backbone.shared[0](x))
    dropped = dropout(conv_out)
    per_channel = (dropped == 0).flatten(2).all(dim=2)  # channels zeroed entirely
    assert per_channel.any() and ((dropped == 0) == per_channel[..., None, None]).all()
    backbone.eval()
    assert torch.equal(backbone.encode(x), backbone.encode(x))
    plain = multi_lenet(["a"], in_channels=1, input_size=(28, 28), dropout=0.0).train()
    assert torch.equal(plain.encode(x), plain.encode(x))  # the Aligned-MTL LeNetEncoder


def test_seners_head_config() -> None:
    node = OmegaConf.load(CONFIG_DIR / "heads" / "multi_lenet_classification.yaml")
    node.num_classes = 10
    head = instantiate(node, "heads", in_channels=50, spatial_dims=0)
    assert count(head.parameters()) == (50 * 50 + 50) + (50 * 10 + 10)
    assert head.mlp[2].p == 0.5
    assert head(torch.randn(3, 50), (28, 28)).shape == (3, 10)


@pytest.mark.parametrize("split_depth", [1, 2, 3])
def test_split_depth(split_depth: int) -> None:
    backbone = multi_lenet(["a", "b"], in_channels=1, input_size=(28, 28), split_depth=split_depth)
    blocks = [CONV1, CONV2, FC]
    assert count(backbone.shared_parameters()) == sum(blocks[:split_depth])
    assert count(backbone.task_parameters("b")) == sum(blocks[split_depth:])


@pytest.mark.parametrize("head", [lambda: DenseHead(50, 0, num_outputs=11),
                                  lambda: ReconstructionHead(50, 0, out_channels=1)])
def test_dense_heads_on_flat_features_are_config_errors(head) -> None:
    with pytest.raises(ConfigError, match="need spatial features .* backbone=multi_lenet"):
        head()


@pytest.mark.parametrize(("size", "match"), [((2500,), "reads images"), ((12, 12), "at least 16x16")])
def test_unsuitable_inputs_are_config_errors(size: tuple[int, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        multi_lenet(["a"], in_channels=1, input_size=size)
