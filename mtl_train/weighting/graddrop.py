"""GradDrop (Gradient Sign Dropout): Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020 (arXiv 2010.06808).

GradDrop is a layer on an activation A (B samples x F features) that every task reads. It rewrites the gradient
flowing back through A coordinate by coordinate; it is not a weighted sum of the task gradients. With R_i the
per-sample gradient of task i's loss at A (B x F):

1. the batch-separated signal S_i = sum_b sign(A_b) * R_{i,b} (F,);
2. the positive-sign purity P = 1/2 (1 + sum_i S_i / sum_i |S_i|) in [0, 1] per feature (P = 1/2 where every S_i is
   0);
3. one uniform draw U per feature, shared by all tasks and samples: where U < P the positive signals survive
   (mask M_i = 1 if S_i > 0), elsewhere the negative ones (M_i = 1 if S_i < 0); a task with S_i = 0 at a feature
   is dropped there. So at each feature the positive side is kept with probability P;
4. the gradient passed below the layer is sum_i (l_i + (1 - l_i) M_i) * R_i (M_i broadcast over the batch), with
   l_i task i's leak (0: pure GradDrop; 1: task i passes untouched, the paper's setting for a privileged task).

Where this engine applies it:

* ``mode: rep`` (default, the paper's setting and LibMTL's, the only one it allows): A is the shared representation
  z (the first dimension of z is the batch, F all the others); the masked gradient is backpropagated through the trunk.
* ``mode: params``: the rule on the ``(k, d)`` matrix of per-task gradients w.r.t. the shared parameters, each
  parameter coordinate a feature, without the sign(A) factor and the batch sum (S_i = g_i), as torchjd's
  ``GradDrop``; :meth:`GradDrop.aggregate` applies this form to any gradient matrix.

Sources differ in details (LibMTL, torchjd and the authors' lingvo layer): lingvo and LibMTL add 1e-7 to the
denominator of P, which pulls P towards 1/2 on features whose gradients are smaller than that; the ratio is exact
here. lingvo keeps the features whose S_i is exactly 0 and by default rescales the output's norm; the paper's mask
(followed here, as LibMTL and torchjd) drops them and does not rescale. The purity passes through the identity
(the paper's and every implementation's default ``f``). The leak is one value for all tasks or one per task.

Properties: a zero gradient row changes neither P nor the output, so a task switched off by the training schedule
(loss exactly 0) is ignored; with one task, or where all tasks agree in sign, every nonzero entry is kept and the
output is the plain sum (the scale of a sum, not a mean). Scaling all rows by c > 0 scales the output by c.

Recorded weights. Each task's weight is the share of its gradient GradDrop passes,
w_i = <d_i, R_i> / ||R_i||^2 = l_i + (1 - l_i) ||M_i * R_i||^2 / ||R_i||^2 in [0, 1] (d_i the part of task i that is
passed; 0 for a zero row). The update is not sum_i w_i g_i.

Randomness: one uniform per feature per step, from the module's own ``torch.Generator`` (CPU, seeded by ``seed``;
the same draws on every device), whose state is checkpointed in ``state_dict()`` (extra state). In ``params`` mode
that is d draws per step (and a host-to-device copy of them on a GPU). Under torchrun the sign of z travels with
the per-sample gradients (:meth:`~mtl_train.engine.distributed.Distributed.task_gradients`), so P and the masks
are those of the global batch and the same on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, unscale


def keep_masks(signals: Tensor, uniform: Tensor) -> Tensor:
    """``(k, F)`` 0/1 masks M from the batch-separated ``signals`` S (k, F) and the draws ``uniform`` U (F,): with the
    positive-sign purity P = 1/2 (1 + sum_i S_i / sum_i |S_i|) (1/2 where all S_i are 0), M_i = [S_i > 0] where
    U < P, else [S_i < 0]."""
    total, magnitude = signals.sum(0), signals.abs().sum(0)
    purity = 0.5 * (1 + torch.where(magnitude > 0, total / torch.where(magnitude > 0, magnitude, 1.0), 0.0))
    positive = (uniform.to(purity.dtype) < purity).unsqueeze(0)
    return torch.where(positive, signals > 0, signals < 0).to(signals.dtype)


def graddrop(rows: Tensor, uniform: Tensor, leak: Tensor, signs: Tensor | None = None) -> Aggregation:
    """GradDrop of the per-sample gradients ``rows`` R (k, B, F) at an activation whose signs are ``signs`` (B, F;
    None: no sign factor, as for parameter gradients, B = 1), with the per-feature draws ``uniform`` (F,) and the
    per-task ``leak`` (k,). Returns the flat ``(B * F,)`` direction sum_i (l_i + (1 - l_i) M_i) R_i and the passed
    shares w_i = <d_i, R_i> / ||R_i||^2 (0 for a zero row) as weights."""
    signals = rows.sum(1) if signs is None else (rows * signs.to(rows.dtype)).sum(1)
    leak = leak.to(rows.dtype).unsqueeze(1)
    kept = leak + (1 - leak) * keep_masks(signals, uniform)  # (k, F)
    passed = rows * kept.unsqueeze(1)
    squared_norms = rows.square().sum((1, 2))
    shares = (passed * rows).sum((1, 2))
    weights = torch.where(squared_norms > 0, shares / torch.where(squared_norms > 0, squared_norms, 1.0), 0.0)
    return Aggregation(passed.sum(0).flatten(), weights)


def leak_values(leak: float | Sequence[float], num_tasks: int) -> list[float]:
    """The ``num_tasks`` per-task leaks from one value or a list of one per task, each in [0, 1]."""
    values = [leak] * num_tasks if isinstance(leak, (int, float)) and not isinstance(leak, bool) else list(leak)
    if len(values) != num_tasks or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
        raise ConfigError(f"weighting.leak must be a number in [0, 1] or a list of {num_tasks} of them (one per task), "
                          f"got {leak!r}")
    return [float(v) for v in values]


class GradDrop(GradientWeighting):
    """Gradient sign dropout at the shared representation or on the parameter gradients (module docstring)."""

    def __init__(self, task_names: Sequence[str], leak: float | Sequence[float] = 0.0, seed: int = 0,
                 mode: str = "rep", jacobian: str = "auto", jacobian_chunk: int | None = None,
                 weight_ema: float = 0.0) -> None:
        super().__init__(task_names, mode=mode, jacobian=jacobian, jacobian_chunk=jacobian_chunk, weight_ema=weight_ema)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"weighting.seed must be an integer, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("leak", torch.tensor(leak_values(leak, self.num_tasks)), persistent=False)

    def draw(self, features: int, device: torch.device) -> Tensor:
        """``features`` uniforms in [0, 1) from the method's generator, on ``device``."""
        uniform = torch.rand(features, generator=self.generator)
        if device.type == "cuda":
            # pinned + non_blocking: the host-to-device copy does not wait for the queued GPU work
            uniform = uniform.pin_memory().to(device, non_blocking=True)
        return uniform.to(device)

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        """The rule on a ``(k, d)`` gradient matrix, each column one feature (``params`` mode)."""
        return graddrop(grads.unsqueeze(1), self.draw(grads.shape[1], grads.device), self.leak)

    def keeps_gradients(self, wrt: str) -> bool:
        """In ``params`` mode (the ``rep`` path gathers G with the signs of z)."""
        return self.mode == "params" and super().keeps_gradients(wrt)

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        if self.mode == "params":
            return super().backward(losses, ctx)
        z = self.representation(ctx)
        rows = unscale(self.task_gradients(losses, ctx), ctx.loss_scale)
        # sign(z) rides along as an extra row, so that under torchrun it is gathered with the per-sample rows
        signs = torch.sign(z.detach()).reshape(1, -1).to(rows.dtype)
        gathered, own, back_factor = ctx.distributed.task_gradients(torch.cat([rows, signs]), per_sample=True)
        features = z[0].numel()
        grads = gathered[:-1].view(self.num_tasks, -1, features)
        signs = (gathered[-1] * back_factor).view(-1, features)  # the gather divided every row by back_factor
        aggregation = graddrop(grads, self.draw(features, grads.device), self.leak, signs)
        return self.apply_aggregation(ctx, aggregation, gathered[:-1], losses, own, back_factor)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
