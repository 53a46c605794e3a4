"""Pareto front and hypervolume against hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtl_train.pareto import hypervolume, pareto_front


def test_three_points_on_a_staircase_span_six() -> None:
    points = [(1, 3), (2, 2), (3, 1)]
    assert pareto_front(points, [True, True]) == [0, 1, 2]
    # boxes [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1]: 3 + (2 - 1) * 2 + (3 - 2) * 1
    assert hypervolume(points, (0, 0), [True, True]) == pytest.approx(6.0)


def test_dominated_and_duplicate_points_add_nothing() -> None:
    points = [(1, 3), (2, 2), (2, 2), (1, 1), (3, 1), (0.5, 0.5)]
    assert pareto_front(points, [True, True]) == [0, 1, 2, 4]  # both copies of (2, 2) stay; (1, 1), (.5, .5) go
    assert hypervolume(points, (0, 0), [True, True]) == pytest.approx(6.0)


def test_a_point_not_better_than_the_reference_in_every_objective_spans_nothing() -> None:
    # (5, 0.5) ties the reference's second objective, (-1, 9) is worse in the first
    assert hypervolume([(2, 2), (5, 0.5), (-1, 9)], (0, 0.5), [True, True]) == pytest.approx(2 * 1.5)
    assert hypervolume([(5, 0.5)], (0, 0.5), [True, True]) == 0.0
    assert pareto_front([(2, 2), (5, 0.5), (-1, 9)], [True, True]) == [0, 1, 2]


def test_a_lower_is_better_objective_is_measured_downward_from_the_reference() -> None:
    # accuracy (higher is better) and MAE (lower is better), reference accuracy 0.5, MAE 10
    points = [(0.9, 4.0), (0.7, 2.0), (0.6, 5.0)]
    assert pareto_front(points, [True, False]) == [0, 1]  # (0.6, 5) is worse than (0.9, 4) in both
    # (0.9 - 0.5) x (10 - 4) + (0.7 - 0.5) x (4 - 2)
    assert hypervolume(points, (0.5, 10.0), [True, False]) == pytest.approx(0.4 * 6 + 0.2 * 2)


def test_three_objectives_union_of_boxes() -> None:
    points = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]
    # three boxes of volume 2 that pairwise overlap in the unit cube, which all three share: 3*2 - 3*1 + 1
    assert hypervolume(points, (0, 0, 0), [True] * 3) == pytest.approx(4.0)
    # a point inside the union adds nothing; a point beyond it adds its exclusive part (3-2) x 1 x 1
    assert hypervolume([*points, (1, 1, 1)], (0, 0, 0), [True] * 3) == pytest.approx(4.0)
    assert hypervolume([*points, (3, 1, 1)], (0, 0, 0), [True] * 3) == pytest.approx(5.0)
    assert pareto_front([*points, (1, 1, 1), (3, 1, 1)], [True] * 3) == [1, 2, 4]


def test_hypervolume_equals_inclusion_exclusion_on_random_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        count, objectives = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        points, reference = rng.normal(size=(count, objectives)).round(1), rng.normal(size=objectives).round(1)
        higher = rng.random(objectives) > 0.5
        sign = np.where(higher, 1.0, -1.0)
        boxes = [p * sign for p in points if np.all(p * sign > reference * sign)]
        expected = sum((-1) ** (size + 1) * np.prod(np.min(subset, axis=0) - reference * sign)
                       for size in range(1, len(boxes) + 1) for subset in itertools.combinations(boxes, size))
        assert hypervolume(points, reference, higher) == pytest.approx(expected, abs=1e-12)
