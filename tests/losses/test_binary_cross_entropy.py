"""Binary cross-entropy on logits (mtl_train.losses.binary_cross_entropy) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_train.errors import ConfigError
from mtl_train.labels import masked_mean_loss
from mtl_train.losses.binary_cross_entropy import BinaryCrossEntropy

# Logits 0 and log 3 (sigmoid 1/2 and 3/4), labels 1 and 0:
#   l_0 = -log(1/2) = log 2;  l_1 = -log(1 - 3/4) = log 4;  mean = (log 2 + log 4) / 2 = 1.5 log 2.
LOGITS = torch.tensor([0.0, math.log(3.0)])


@pytest.mark.parametrize("target", [torch.tensor([1, 0]), torch.tensor([1.0, 0.0]), torch.tensor([True, False])],
                         ids=["int64", "float32", "bool"])
def test_integer_float_and_bool_labels_give_the_same_loss(target: torch.Tensor) -> None:
    loss = BinaryCrossEntropy()(LOGITS, target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(1.5 * math.log(2))


def test_pos_weight_weighs_the_positive_term() -> None:
    """pos_weight 3: l_0 = 3 log 2 (its label is 1), l_1 unchanged: mean (3 log 2 + 2 log 2) / 2 = 2.5 log 2."""
    assert BinaryCrossEntropy(pos_weight=3.0)(LOGITS, torch.tensor([1, 0])).item() == pytest.approx(2.5 * math.log(2))


def test_multilabel_pos_weight_per_label() -> None:
    """(1, 2) logits 0, 0 with labels 1, 1 and weights 1, 3: (log 2 + 3 log 2) / 2 = 2 log 2."""
    loss = BinaryCrossEntropy(pos_weight=[1.0, 3.0])(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.int64))
    assert loss.item() == pytest.approx(2 * math.log(2))


def test_low_precision_logits_give_float32() -> None:
    loss = BinaryCrossEntropy()(LOGITS.bfloat16(), torch.tensor([1, 0]))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(1.5 * math.log(2), rel=1e-2)


def test_masked_mean_over_labelled_elements() -> None:
    """With missing labels (-1) the lead's masked mean uses reduction='none': the -1 element is left out."""
    target = torch.tensor([1, 0, -1])
    loss = masked_mean_loss(BinaryCrossEntropy(), torch.cat([LOGITS, torch.tensor([5.0])]), target, target != -1)
    assert loss.item() == pytest.approx(1.5 * math.log(2))


def test_a_target_of_another_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"targets of the logits' shape \(2,\), got \(2, 1\)"):
        BinaryCrossEntropy()(LOGITS, torch.ones(2, 1))


@pytest.mark.parametrize("pos_weight", [0.0, [1.0, -2.0], []])
def test_pos_weight_must_be_positive(pos_weight: float | list[float]) -> None:
    with pytest.raises(ConfigError, match="^loss.pos_weight must be a positive number"):
        BinaryCrossEntropy(pos_weight=pos_weight)
