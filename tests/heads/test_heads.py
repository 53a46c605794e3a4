"""Output shapes and behaviour of every head, on 1-D and 2-D features."""

from __future__ import annotations

import pytest
import torch

from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.heads.dense import DenseHead
from mtl_train.heads.reconstruction import ReconstructionHead
from mtl_train.heads.regression import RegressionHead


@pytest.mark.parametrize(("dims", "features", "size"), [(1, (2, 6, 40), (640,)), (2, (2, 6, 3, 3), (28, 28))])
def test_shapes(dims: int, features: tuple, size: tuple) -> None:
    x = torch.randn(*features)
    assert ClassificationHead(6, dims, num_classes=4)(x, size).shape == (2, 4)
    assert RegressionHead(6, dims)(x, size).shape == (2,)
    assert RegressionHead(6, dims, num_outputs=3)(x, size).shape == (2, 3)
    assert DenseHead(6, dims, num_outputs=5, upsample_stages=3)(x, size).shape == (2, 5, *size)
    assert ReconstructionHead(6, dims, out_channels=1)(x, size).shape == (2, 1, *size)


def test_regression_head_maps_to_target_units() -> None:
    head = RegressionHead(4, 1, offset=80.0, scale=30.0)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
    assert head(torch.randn(3, 4, 10), (10,)).tolist() == [80.0, 80.0, 80.0]


def test_sigmoid_reconstruction_lies_in_unit_interval() -> None:
    out = ReconstructionHead(4, 2, out_channels=1, activation="sigmoid")(10 * torch.randn(2, 4, 7, 7), (28, 28))
    assert out.min() >= 0 and out.max() <= 1


def test_bad_activation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="activation"):
        ReconstructionHead(4, 2, out_channels=1, activation="tanh")
