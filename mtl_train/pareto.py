"""Pareto front and hypervolume of a set of points (numbers in, numbers out).

Each point has one value per objective; ``higher_is_better[j]`` says which way objective ``j`` improves.

- A point *dominates* another when it is at least as good in every objective and strictly better in one; the
  Pareto front is the set of points no other point dominates (equal points do not dominate each other, so
  duplicates on the front all stay).
- The hypervolume (Zitzler & Thiele, "Multiobjective optimization using evolutionary algorithms — a comparative
  case study", PPSN 1998) of points with respect to a reference point is the volume of the union of the boxes
  spanned between the reference and each point; a point that is not strictly better than the reference in every
  objective spans nothing. It is computed exactly with the WFG algorithm (While, Bradstreet & Barone, "A fast way
  of calculating exact hypervolumes", IEEE TEVC 2012): the sum of each point's exclusive contribution, its box less
  the hypervolume of the later points limited to that box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def oriented(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> np.ndarray:
    """``points`` as an ``(n, k)`` array in which higher is better in every objective (lower-is-better negated)."""
    array = np.asarray(points, dtype=float).reshape(len(points), len(higher_is_better))
    return array * np.where(np.asarray(higher_is_better, dtype=bool), 1.0, -1.0)


def pareto_front(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the points that no other point dominates."""
    values = oriented(points, higher_is_better)
    front = []
    for i, point in enumerate(values):
        dominated = np.any(np.all(values >= point, axis=1) & np.any(values > point, axis=1))
        if not dominated:
            front.append(i)
    return front


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float],
                higher_is_better: Sequence[bool]) -> float:
    """The exact hypervolume of ``points`` with respect to ``reference`` (any number of objectives)."""
    values = oriented(points, higher_is_better)
    ref = oriented([reference], higher_is_better)[0]
    values = values[np.all(values > ref, axis=1)] - ref  # the reference moves to the origin
    if len(values) == 0:
        return 0.0
    return float(wfg(non_dominated(values)))


def non_dominated(values: np.ndarray) -> np.ndarray:
    """The rows of ``values`` (higher is better) that no other row dominates, one copy of each, sorted by the first
    objective, best first (WFG's limited sets are then small)."""
    values = np.unique(values, axis=0)
    keep = [i for i, point in enumerate(values)
            if not np.any(np.all(values >= point, axis=1) & np.any(values > point, axis=1))]
    kept = values[keep]
    return kept[np.argsort(-kept[:, 0], kind="stable")]


def wfg(values: np.ndarray) -> float:
    """Hypervolume of mutually non-dominated ``values`` (higher is better) against the origin."""
    if len(values) == 0:
        return 0.0
    if values.shape[1] == 2:  # a staircase: sorted by x descending, y ascends
        order = values[np.argsort(-values[:, 0])]
        heights = np.diff(np.concatenate([[0.0], order[:, 1]]))
        return float(np.sum(order[:, 0] * heights))
    total = 0.0
    for i, point in enumerate(values):
        limited = np.minimum(values[i + 1:], point)  # the later points cut down to this point's box
        total += float(np.prod(point)) - wfg(non_dominated(limited[np.all(limited > 0, axis=1)]))
    return total
