"""Hard sharing with a configurable split depth, and the model's shared/task parameter split."""

from __future__ import annotations

import pytest
import torch

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.heads.dense import DenseHead
from mtl_train.model import MultiTaskModel


def model_with_split(split_depth: int) -> MultiTaskModel:
    backbone = hard_cnn(["a", "b"], in_channels=1, input_size=(28, 28), spatial_dims=2, channels=(4, 8, 8), split_depth=split_depth)
    heads = {"a": ClassificationHead(8, 2, num_classes=3), "b": DenseHead(8, 2, num_outputs=2, upsample_stages=3)}
    return MultiTaskModel(backbone, heads)


def count(params: list[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("split_depth", [1, 2, 3])
def test_split_depth_moves_blocks_from_shared_to_per_task(split_depth: int) -> None:
    model = model_with_split(split_depth)
    # block sizes: conv weight + BN (weight, bias) per block
    block_sizes = [4 * 1 * 9 + 2 * 4, 8 * 4 * 9 + 2 * 8, 8 * 8 * 9 + 2 * 8]
    assert count(model.shared_parameters()) == sum(block_sizes[:split_depth])
    head_a = count(list(model.heads["a"].parameters()))
    assert count(model.task_parameters("a")) == sum(block_sizes[split_depth:]) + head_a
    shared_ids = {id(p) for p in model.shared_parameters()}
    a_ids, b_ids = ({id(p) for p in model.task_parameters(t)} for t in ("a", "b"))
    assert not (shared_ids & a_ids) and not (a_ids & b_ids)
    assert shared_ids | a_ids | b_ids == {id(p) for p in model.parameters()}


def test_outputs_per_task_and_shared_representation() -> None:
    model = model_with_split(2)
    x = torch.randn(5, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (5, 8, 7, 7)  # two shared blocks pool 28 -> 14 -> 7
    outputs = model(x)
    assert outputs["a"].shape == (5, 3) and outputs["b"].shape == (5, 2, 28, 28)
    assert torch.allclose(outputs["a"], model.decode(z, x)["a"])


def test_task_branches_start_equal_but_are_separate_copies() -> None:
    model = model_with_split(1)
    a, b = model.backbone.branches["a"], model.backbone.branches["b"]
    assert all(torch.equal(p, q) and p is not q for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("split_depth", [0, 4])
def test_split_depth_out_of_range_is_a_config_error(split_depth: int) -> None:
    with pytest.raises(ConfigError, match="backbone.split_depth"):
        model_with_split(split_depth)


def test_more_pooling_than_the_input_allows_is_a_config_error() -> None:
    """Three pooling blocks halve 4 samples to nothing: 4 < 2**3."""
    with pytest.raises(ConfigError, match=r"backbone.channels .* downsamples by 8x"):
        hard_cnn(["a"], in_channels=1, input_size=(4,), spatial_dims=1, channels=(2, 2, 2))
