"""Per-task gradients as a ``(k, d)`` matrix: row t is the flattened gradient of task loss t."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def task_gradient_matrix(losses: Tensor, params: Sequence[Tensor], retain_graph: bool = True) -> Tensor:
    """Row t = d losses[t] / d params, flattened and concatenated over ``params`` (one backward per task).

    Parameters a task does not reach contribute zeros.
    """
    rows = []
    for t in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[t], params, retain_graph=retain_graph, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]))
    return torch.stack(rows)
