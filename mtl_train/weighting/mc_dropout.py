"""MC-dropout uncertainty weighting: weight each task by its predictive variance under dropout on z.

Monte-Carlo dropout as a Bayesian approximation (Gal & Ghahramani, "Dropout as a Bayesian Approximation:
Representing Model Uncertainty in Deep Learning", ICML 2016): the spread of a network's outputs over several
forward passes with dropout estimates its predictive uncertainty. Every step, without gradients:

    for s = 1..S:   y_i^(s) = decode(dropout(z, p))_i          (S = num_samples passes, one mask per pass)
    v_i = mean over elements of  Var_s[ u_i^(s) ]               (sample variance, S - 1 in the denominator)
    w_i = (v_i + eps) / sum_j (v_j + eps)                       (the weights SUM TO 1)
    L   = sum_i w_i L_i                                         (w detached)

with u = softmax(y, dim=1) for tasks whose outputs hold class logits (``StepContext.class_logits``), so their
variance is that of the predicted probabilities, and u = y (the raw outputs) for value tasks. Direction: the
more uncertain task gets the larger weight (w proportional to variance). Defaults: ``num_samples`` 8,
``dropout`` 0.1, ``eps`` 1e-8 (all variances 0, e.g. ``dropout=0``, gives uniform weights 1/k). A task whose loss
is exactly 0 (switched off by the training schedule) gets weight 0, and the active tasks' weights are normalised to
sum to 1 among themselves.

Details of this implementation:

* Dropout is applied only to the detached shared representation z (``StepContext.shared_representation``);
  the task branches and heads then run in whatever mode the model is in (during training: train mode, so any
  dropout inside the heads adds to the noise). The model's train/eval mode is never changed, and the passes
  run on copies of its buffers (BatchNorm running statistics of task-specific blocks), which are swapped back
  afterwards: the extra passes leave the model exactly as they found it, and the buffers saved for this step's
  backward are never modified in place.
* ``decode`` needs the input's spatial size, which the context does not carry: dense heads (segmentation,
  reconstruction) predict at the input's resolution, so it is read from the task outputs with spatial dims
  (the largest, should they differ). Without any dense task the heads pool and ignore it; z's own size is passed.
* Under AMP (z in float16/bfloat16) the passes run under autocast in z's dtype, like the training forward.
* Value tasks are compared in their own units: a task predicting large values (e.g. heart rate in bpm) has a
  larger variance than a probability in [0, 1] for the same relative spread, and takes most of the weight.

Cost: ``num_samples`` extra passes through every task branch and head per step (no backward), plus S dropout
draws from the global RNG; memory is two running tensors per task (Welford's update), whatever S.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, share_over_active


class MCDropoutWeighting(Weighting):
    """w_i proportional to the MC-dropout predictive variance of task i, normalised to sum to 1."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(self, task_names: Sequence[str], num_samples: int = 8, dropout: float = 0.1, eps: float = 1e-8) -> None:
        super().__init__(task_names)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ConfigError(
                f"weighting.num_samples must be an integer >= 2 (a variance needs two passes), got {num_samples!r}; "
                "the default is 8"
            )
        if not 0 <= dropout < 1:
            raise ConfigError(f"weighting.dropout must be in [0, 1), got {dropout}; the default is 0.1")
        if not eps > 0:
            raise ConfigError(f"weighting.eps must be > 0 (it keeps the weights defined), got {eps}; the default is 1e-8")
        self.num_samples = num_samples
        self.dropout = float(dropout)
        self.eps = float(eps)

    def _check_context(self, ctx: StepContext) -> None:
        missing = [t for t in self.task_names if t not in ctx.outputs or t not in ctx.class_logits]
        absent = [name for name in ("inputs", "shared_representation") if getattr(ctx, name) is None]
        if absent or missing:
            raise RuntimeError(
                "weighting=mc_dropout needs StepContext.inputs, shared_representation, outputs and class_logits; the "
                f"trainer did not provide {absent or missing}"
            )

    @torch.no_grad()
    def predictive_variances(self, ctx: StepContext) -> Tensor:
        """The ``(k,)`` mean per-element variances of the task outputs over ``num_samples`` dropout passes."""
        self._check_context(ctx)
        model = ctx.model
        z = ctx.shared_representation.detach()
        autocast = (torch.autocast(z.device.type, dtype=z.dtype) if z.dtype in (torch.float16, torch.bfloat16)
                    else nullcontext())
        # The passes run on copies of the buffers: in train mode BatchNorm updates its running statistics in
        # place, and those tensors are saved for this step's backward (modifying them would break it).
        originals = [(module, name, buffer) for module in model.modules() for name, buffer in module._buffers.items()
                     if buffer is not None]
        for module, name, buffer in originals:
            module._buffers[name] = buffer.clone()
        mean: dict[str, Tensor] = {}
        m2: dict[str, Tensor] = {}
        try:
            for n in range(1, self.num_samples + 1):
                with autocast:
                    outputs = model.decode(F.dropout(z, self.dropout, training=True), ctx.inputs)
                for task in self.task_names:
                    u = outputs[task].float()
                    if ctx.class_logits[task]:
                        u = torch.softmax(u, dim=1)
                    if n == 1:
                        mean[task], m2[task] = u.clone(), torch.zeros_like(u)
                    else:
                        delta = u - mean[task]
                        mean[task] += delta / n
                        m2[task] += delta * (u - mean[task])
        finally:
            for module, name, buffer in originals:
                module._buffers[name] = buffer
        return torch.stack([(m2[t] / (self.num_samples - 1)).mean() for t in self.task_names])

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        variances = (self.predictive_variances(ctx) + self.eps).to(device=losses.device, dtype=losses.dtype)
        weights = share_over_active(variances, active_tasks(losses))
        ctx.scale((weights * losses).sum()).backward()
        return weights
