"""Inter-task affinity on a model whose lookahead losses are computable by hand, and the suggested grouping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl_train.diagnostics.affinity import lookahead_affinity, set_partitions, suggested_groups


class ScaledCopies(nn.Module):
    """Two tasks reading one shared scalar w: outputs (c_1 w x, c_2 w x) with c = (1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("c", torch.tensor([1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * self.w * x


def test_affinity_matches_the_hand_computed_lookahead() -> None:
    """MSE to 0 at x = 1, w = 1: L = (w^2, 4 w^2), g = (2, 8), lr 0.1. A step on task 1: w' = 0.8, L_2' = 2.56,
    Z_{1->2} = 1 - 2.56 / 4 = 0.36; on task 2: w' = 0.2, L_1' = 0.04, Z_{2->1} = 0.96."""
    model = ScaledCopies()
    x = torch.tensor(1.0)

    def losses_with(parameters: dict | None) -> torch.Tensor:
        outputs = model(x) if parameters is None else torch.func.functional_call(model, parameters, (x,))
        return outputs ** 2

    grads = torch.tensor([[2.0], [8.0]])
    z = lookahead_affinity(grads, 0.1, [("w", model.w)], losses_with, torch.tensor([True, True]))
    assert z[0, 1].item() == pytest.approx(0.36) and z[1, 0].item() == pytest.approx(0.96)
    assert math.isnan(z[0, 0]) and math.isnan(z[1, 1])
    assert model.w.item() == 1.0 and model.w.grad is None  # the model is untouched
    z = lookahead_affinity(grads, 0.1, [("w", model.w)], losses_with, torch.tensor([True, False]))
    assert z.isnan().all()  # task 2 switched off: its row and column


def test_set_partitions_are_every_partition_once() -> None:
    partitions = [sorted(sorted(g) for g in p) for p in set_partitions([0, 1, 2, 3])]
    assert len(partitions) == 15 and len({str(p) for p in partitions}) == 15  # Bell(4)


def test_grouping_of_a_hand_made_affinity() -> None:
    """a and b help each other (0.5), c and d too (0.4), across the pairs they hurt (-0.2): {a, b}, {c, d} scores
    2 * 0.5 + 2 * 0.4 = 1.8, one group of four scores (0.5 - 0.4) / 3 * 2 + (0.4 - 0.4) / 3 * 2 < 1.8."""
    tasks = ["a", "b", "c", "d"]
    z = torch.full((4, 4), -0.2)
    z[0, 1] = z[1, 0] = 0.5
    z[2, 3] = z[3, 2] = 0.4
    z.fill_diagonal_(math.nan)
    assert suggested_groups(z, tasks) == [["a", "b"], ["c", "d"]]
    assert suggested_groups(-z.abs(), tasks) == [["a"], ["b"], ["c"], ["d"]]  # every step hurts: all alone
    assert suggested_groups(torch.zeros(4, 4), tasks) == [tasks]  # a tie: the fewest groups
