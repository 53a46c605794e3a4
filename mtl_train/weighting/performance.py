"""Performance-based weighting: per-task weights from each task's latest validation metric (its "KPI").

After every validation the trainer calls ``after_evaluation(metrics)``; each task's KPI kappa_i is read from
its results and smoothed, kbar_i <- ema * kappa_i + (1 - ema) * kbar_i (the first evaluation sets kbar = kappa).
Until the first evaluation the weights are uniform, 1/k each. Then, with the weights normalised to SUM TO 1:

    mode=direct:   w_i = kbar_i / sum_j kbar_j                      (better-performing tasks weigh more)
    mode=inverse:  w_i = FL_i / sum_j FL_j,   FL_i = -(1 - c_i)^gamma * log(c_i),   c_i = clip(kbar_i, 0.1, 0.99)
    L = sum_i w_i L_i                                                (w constant between evaluations)

``inverse`` favours the worse task, as Dynamic Task Prioritization does (Guo, Haque, Huang, Yeung & Fei-Fei,
"Dynamic Task Prioritization for Multitask Learning", ECCV 2018: a focal-loss-style weight of each task's KPI).
The clip to [0.1, 0.99] (which keeps -log finite and every weight > 0) follows third-party DTP code; the defaults
``gamma`` 1.0 and ``ema`` 1.0 (no smoothing) are ours, the paper's own gamma and smoothing values are
unverified here. Worked examples (KPIs 0.8 / 0.6): direct 0.571 / 0.429; inverse with gamma = 1:
w proportional to (0.2 * 0.2231, 0.4 * 0.5108), i.e. 0.179 / 0.821. In a step where a task's loss is exactly 0
(switched off by the training schedule) it gets weight 0, and the active tasks' weights are rescaled to sum to 1
among themselves.

KPIs must lie in [0, 1] with higher better. ``metrics`` maps task -> the metric name to read; for a task it
leaves out (or when it is null) the first of ``accuracy, miou, pixel_accuracy, macro_f1`` that the task's
validation results hold is used. A task with none of them (regression, reconstruction) or a value outside
[0, 1] is a :class:`~mtl_train.errors.ConfigError` at the first evaluation (the trainer builds a weighting
knowing only task names). The smoothed KPIs, the evaluation count and the current weights are buffers, so
``state_dict()`` checkpoints them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.weighting.base import StepContext, Weighting, active_tasks, share_over_active

AUTO_METRICS = ("accuracy", "miou", "pixel_accuracy", "macro_f1")
"""Metrics tried in order when ``weighting.metrics`` names none for a task: all in [0, 1], higher is better."""

KPI_CLIP = (0.1, 0.99)
"""``mode=inverse`` clips the KPIs to this range before -(1 - c)^gamma log c."""

LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse")
"""Metric names known to be lower-is-better, refused in ``weighting.metrics``."""

_EPS = 1e-8  # mode=direct: keeps the weights defined when every KPI is 0
_MODES = ("direct", "inverse")


def performance_weights(kpi: Tensor, mode: str, gamma: float) -> Tensor:
    """The weights (sum 1) for smoothed KPIs ``kpi`` in [0, 1]."""
    if mode == "direct":
        scores = kpi + _EPS
    else:
        clipped = kpi.clamp(*KPI_CLIP)
        scores = -((1 - clipped) ** gamma) * torch.log(clipped)
    return scores / scores.sum()


class PerformanceWeighting(Weighting):
    """Weights from the latest validation KPIs: ``mode`` direct (w proportional to KPI) or inverse (DTP-style)."""

    cuda_graph_safe = True  # tests/weighting/test_cuda_graph_safety.py

    def __init__(
        self,
        task_names: Sequence[str],
        metrics: Mapping[str, str] | None = None,
        mode: str = "direct",
        gamma: float = 1.0,
        ema: float = 1.0,
    ) -> None:
        super().__init__(task_names)
        if mode not in _MODES:
            raise ConfigError(f"weighting.mode must be 'direct' or 'inverse', got {mode!r}")
        if not gamma >= 0:
            raise ConfigError(f"weighting.gamma must be >= 0, got {gamma}; the default is 1.0")
        if not 0 < ema <= 1:
            raise ConfigError(f"weighting.ema must be in (0, 1] (1 = no smoothing), got {ema}")
        self.metrics = self._check_metrics(metrics)
        self.mode = mode
        self.gamma = float(gamma)
        self.ema = float(ema)
        self.register_buffer("kpi", torch.zeros(self.num_tasks))
        self.register_buffer("num_evaluations", torch.zeros((), dtype=torch.int64))
        self.register_buffer("weights", torch.full((self.num_tasks,), 1.0 / self.num_tasks))  # uniform until evaluated

    def _check_metrics(self, metrics: Mapping[str, str] | None) -> dict[str, str]:
        if metrics is None:
            return {}
        if not isinstance(metrics, Mapping):
            raise ConfigError(
                f"weighting.metrics must be a mapping task -> metric name or null, got {metrics!r}; example: "
                f"'weighting.metrics={{{self.task_names[0]}:accuracy}}'"
            )
        unknown = sorted(set(metrics) - set(self.task_names))
        if unknown:
            raise ConfigError(f"weighting.metrics names unknown tasks {unknown}; the tasks are {self.task_names}")
        lower = {t: m for t, m in metrics.items() if m in LOWER_IS_BETTER}
        if lower:
            raise ConfigError(
                f"weighting.metrics names lower-is-better metrics {lower}; weighting=performance needs metrics in "
                f"[0, 1] where higher is better, such as {', '.join(AUTO_METRICS)}"
            )
        return {t: str(m) for t, m in metrics.items()}

    def _metric_name(self, task: str, results: Mapping[str, float]) -> str:
        if task in self.metrics:
            name = self.metrics[task]
            if name not in results:
                raise ConfigError(
                    f"weighting.metrics names {name!r} for task {task!r}, but its validation results hold "
                    f"{sorted(results)}; name one of those that lies in [0, 1] with higher better"
                )
            return name
        for name in AUTO_METRICS:
            if name in results:
                return name
        raise ConfigError(
            f"weighting=performance needs a validation metric in [0, 1] where higher is better for every task; "
            f"task {task!r} reports {sorted(results)} and none of {', '.join(AUTO_METRICS)}. Set weighting.metrics "
            f"(e.g. 'weighting.metrics={{{task}:<metric>}}') if one of its metrics fits, or use a task set of "
            "classification/segmentation tasks (e.g. task=cls_seg) or another weighting"
        )

    def after_evaluation(self, metrics: dict[str, dict[str, float]]) -> None:
        missing = [t for t in self.task_names if t not in metrics]
        if missing:
            raise RuntimeError(f"weighting=performance got no validation metrics for tasks {missing}")
        values = []
        for task in self.task_names:
            name = self._metric_name(task, metrics[task])
            value = float(metrics[task][name])
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ConfigError(
                    f"weighting=performance needs metrics in [0, 1] where higher is better; task {task!r} has "
                    f"{name} = {value}. Set weighting.metrics={{{task}:<metric>}} to such a metric, e.g. one of "
                    f"{', '.join(AUTO_METRICS)}"
                )
            values.append(value)
        kpi = torch.tensor(values, dtype=self.kpi.dtype, device=self.kpi.device)
        with torch.no_grad():
            if self.num_evaluations.item() == 0:
                self.kpi.copy_(kpi)
            else:
                self.kpi.mul_(1 - self.ema).add_(self.ema * kpi)
            self.num_evaluations += 1
            self.weights.copy_(performance_weights(self.kpi, self.mode, self.gamma))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = self.weights.to(device=losses.device, dtype=losses.dtype)  # a buffer: no host sync per step
        weights = share_over_active(weights, active_tasks(losses))
        ctx.scale((weights * losses).sum()).backward()
        return weights
