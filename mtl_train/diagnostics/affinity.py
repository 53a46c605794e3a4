"""Inter-task affinity (Fifty, Amid, Zhao, Yu, Anil & Finn, "Efficiently Identifying Task Groupings in Multi-Task
Learning", NeurIPS 2021) and the task grouping it suggests.

Affinity of task i onto task j at a step: take a step on task i alone from the shared parameters theta_s,

    theta_s' = theta_s - lr * g_i        (g_i = dL_i/dtheta_s; lr = the optimizer's current learning rate),

and compare task j's loss on the same batch before and after it,

    Z_{i->j} = 1 - L_j(theta_s', theta_j) / L_j(theta_s, theta_j).

Z_{i->j} > 0: a step on i lowers j's loss (i helps j); < 0: it raises it. The lookahead is a plain SGD step (as in
the paper's definition; with Adam the run's real step differs). Both losses come from the same forward (train mode,
the step's dropout masks, batch statistics without moving BatchNorm's running ones) with the parameters swapped in
by ``torch.func.functional_call``: the model, its buffers, the RNGs and the optimizer are left as they were.
A task switched off in the step (loss exactly 0) has NaN in its row and column.

Grouping (:func:`suggested_groups`): TAG's score of a partition of the tasks into groups is the sum over tasks j of
the mean of Z_{i->j} over the other tasks i in j's group (a task alone scores 0). The suggestion is the partition
with the highest score over the mean affinity of the run, searched exhaustively over every set partition (Bell(8) =
4140 for k = 8; no suggestion above :data:`MAX_GROUPING_TASKS`); on a tie, the partition with fewer groups. So tasks
that help each other on average train together, and a task whose step hurts the others (and is hurt) stays alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from mtl_train.diagnostics.gradients import nan_to_none
from mtl_train.engine.outputs import read_step_csv

MAX_GROUPING_TASKS = 8


def affinity_header(tasks: list[str]) -> list[str]:
    """``affinity.csv``'s columns: ``step`` then ``<i>-><j>`` for every ordered pair i != j (i-major)."""
    return ["step", *(f"{i}->{j}" for i in tasks for j in tasks if i != j)]


def off_diagonal(matrix: Tensor) -> Tensor:
    """The entries (i, j), i != j, of a (k, k) matrix in :func:`affinity_header`'s order."""
    k = matrix.shape[0]
    return matrix[~torch.eye(k, dtype=torch.bool, device=matrix.device)]


def lookahead_affinity(grads: Tensor, lr: float, shared: list[tuple[str, nn.Parameter]],
                       losses_with: Callable[[dict[str, Tensor] | None], Tensor], active: Tensor) -> Tensor:
    """The (k, k) matrix Z (row i: the task stepped on; column j: the task whose loss is compared; diagonal NaN)
    from G ``(k, d)`` w.r.t. the flattened ``shared`` parameters (in true units), the learning rate ``lr`` and
    ``losses_with(parameters)``, the (k,) task losses on the step's batch with ``parameters`` (name -> tensor)
    in place of the model's own (None: the model's), without grad."""
    with torch.no_grad():
        before = losses_with(None).double()
        rows = []
        for g in grads:
            lookahead, offset = {}, 0
            for name, p in shared:
                lookahead[name] = p - lr * g[offset:offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            rows.append(1.0 - losses_with(lookahead).double() / before)
        affinity = torch.stack(rows)
        valid = active.unsqueeze(1) & active.unsqueeze(0) & ~torch.eye(len(active), dtype=torch.bool,
                                                                        device=active.device)
        return torch.where(valid, affinity, math.nan)


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every partition of ``items`` into non-empty groups (each exactly once)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for index in range(len(partition)):
            yield [*partition[:index], [first, *partition[index]], *partition[index + 1:]]


def grouping_score(partition: list[list[int]], affinity: list[list[float]]) -> float:
    """TAG's score: sum over tasks j of the mean of Z_{i->j} over the others i of j's group (alone: 0). NaN
    affinities (a pair never active together) count as 0."""
    score = 0.0
    for group in partition:
        for j in group:
            others = [affinity[i][j] for i in group if i != j]
            if others:
                score += sum(0.0 if math.isnan(z) else z for z in others) / len(others)
    return score


def suggested_groups(affinity: Tensor, tasks: list[str]) -> list[list[str]] | None:
    """The partition of ``tasks`` with the highest :func:`grouping_score` on the (k, k) mean ``affinity`` (fewer
    groups on a tie; the module docstring); None above :data:`MAX_GROUPING_TASKS` tasks."""
    if len(tasks) > MAX_GROUPING_TASKS:
        return None
    matrix = affinity.tolist()
    best = max(set_partitions(list(range(len(tasks)))),
               key=lambda partition: (round(grouping_score(partition, matrix), 12), -len(partition)))
    return [[tasks[i] for i in sorted(group)] for group in sorted(best, key=min)]


def read_affinity_csv(path: Path) -> tuple[list[str], Tensor, Tensor]:
    """Read a run's ``affinity.csv``: (tasks, steps (n,), Z (n, k, k) with a NaN diagonal)."""
    columns, steps, values = read_step_csv(path)
    tasks = list(dict.fromkeys(name.split("->")[0] for name in columns))
    k, n = len(tasks), len(steps)
    affinity = torch.full((n, k, k), math.nan, dtype=torch.float64)
    affinity[:, ~torch.eye(k, dtype=torch.bool)] = values
    return tasks, steps, affinity


def affinity_summary(path: Path, every: int) -> dict:
    """``summary.json``'s ``diagnostics.affinity``: the mean Z over the samples and the suggested groups."""
    tasks, steps, affinity = read_affinity_csv(path)
    mean = torch.nanmean(affinity, dim=0)
    return {"every": every, "samples": len(steps), "mean": nan_to_none(mean.tolist()),
            "groups": suggested_groups(mean, tasks)}
