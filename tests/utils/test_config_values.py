"""Config values against Python type hints (matches / describe), on hand-picked values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional

import pytest
import torch

from mtl_train.utils.config_values import describe, matches, representable


@pytest.mark.parametrize(("value", "hint", "expected"), [
    (3, int, True),
    (True, int, False),         # YAML true is no integer
    (3.0, int, False),
    (3, float, True),           # an integer is a valid float
    ("3", float, False),
    (False, float, False),
    (True, bool, True),
    (1, bool, False),
    ("abc", str, True),
    (None, int | None, True),
    (None, Optional[float], True),
    (2.5, int | None, False),
    ("rep", Literal["rep", "params"], True),
    ("loss", Literal["rep", "params"], False),
    (1, Literal[True], False),   # 1 == True, but not a bool
    ([1, 2], Sequence[int], True),
    ([1, "2"], Sequence[int], False),
    ("ab", Sequence[str], False),  # a string is not a list of strings here
    ([0.9, 0.99], tuple[float, float], True),
    ([0.9], tuple[float, float], False),
    ([1, 2, 3], tuple[int, ...], True),
    ({"a": 1.0}, Mapping[str, float], True),
    ({"a": "x"}, Mapping[str, float], False),
    ([1.0], Mapping[str, float] | Sequence[float] | None, True),
    (0.1, float | torch.Tensor, True),
    ("abc", float | torch.Tensor, False),
    ("anything", Any, True),
])
def test_matches(value: object, hint: object, expected: bool) -> None:
    assert matches(value, hint) is expected


@pytest.mark.parametrize(("hint", "text"), [
    (int, "an integer"),
    (float, "a float (number)"),
    (bool, "true or false"),
    (str, "a string"),
    (int | None, "an integer or null"),
    (Literal["sum", "mean"], "one of 'sum', 'mean'"),
    (Sequence[int], "a list of integers"),
    (tuple[float | torch.Tensor, float | torch.Tensor], "a list of 2 numbers"),
    (Mapping[str, float] | Sequence[float] | None, "a mapping to numbers or a list of numbers or null"),
    (float | torch.Tensor, "a float (number)"),
])
def test_describe(hint: object, text: str) -> None:
    assert describe(hint) == text


def test_a_hint_no_config_value_can_match_is_not_representable() -> None:
    assert not representable(torch.optim.Optimizer)
    assert not representable(torch.Tensor | torch.nn.Module)
    assert representable(float | torch.Tensor)
