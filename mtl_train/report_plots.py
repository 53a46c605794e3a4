"""Comparison plots of many runs (of one task set), each saved as PNG next to the CSV of the numbers it shows.

- ``weights_comparison``: task-weight trajectories, one panel per configuration;
- ``losses_comparison``: training-loss curves, one panel per configuration;
- ``metric_curves``: one panel per task, its primary validation metric against the step, one line per configuration;
- ``tradeoff``: the first two tasks' primary test metrics against each other, per configuration;
- ``pareto_parallel`` (three or more tasks): every configuration's mean primary test metrics on parallel axes;
- ``gradient_cosines_comparison`` (runs with gradient diagnostics): per configuration, the mean cosine matrix of
  the task gradients.

Curves are the mean over a configuration's seeds, with a band of ± one sample standard deviation; the trade-off
plot shows each configuration's mean with ± std error bars and every seed as a small marker, and ``better`` with
an arrow toward the corner where both metrics are better. With two tasks it marks the Pareto front: the front's
configurations have filled markers joined by the staircase that bounds the region they dominate, the others
hollow ones. Panels of the same quantity share their axes. Lines that coincide stay visible through
:func:`mtl_train.plots.series_style`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mtl_train.delta_m import test_metrics  # noqa: E402
from mtl_train.diagnostics.plots import cosine_heatmap  # noqa: E402
from mtl_train.engine.outputs import read_step_csv  # noqa: E402
from mtl_train.plots import MARKERS, series_style  # noqa: E402

if TYPE_CHECKING:  # report.py imports this module to draw its plots
    from mtl_train.report import Run

PANELS_PER_ROW = 3
SEED_NOTE = "mean over seeds ± 1 std"


@dataclass
class Plot:
    """A comparison figure and the numbers it shows, written as ``<stem>.png`` and ``<stem>.csv``."""

    stem: str
    figure: Figure
    header: list[str]
    rows: list[list]


@dataclass
class SeedMean:
    """A curve averaged over seeds: the steps every seed has, the mean and sample std there, the seed count."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    seeds: int


def runs_per_config(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs of each configuration (in order of first appearance), sorted by seed."""
    configs: dict[str, list[Run]] = {}
    for run in runs:
        configs.setdefault(run.label, []).append(run)
    return {label: sorted(group, key=lambda r: r.summary.get("seed", 0)) for label, group in configs.items()}


def seed_mean(series: Sequence[dict[int, float]]) -> SeedMean:
    """Mean and sample std over ``series`` (one ``{step: value}`` per seed) at the steps they all have; std 0 for a
    single seed."""
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[step] for step in steps] for s in series], dtype=float).reshape(len(series), len(steps))
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(steps))
    return SeedMean(np.array(steps), values.mean(axis=0), std, len(series))


def step_series(run: Run, csv_name: str) -> dict[str, dict[int, float]]:
    """``{column: {step: value}}`` of a run's ``losses.csv`` or ``weights.csv``."""
    names, steps, values = read_step_csv(run.run_dir / csv_name)
    return {name: dict(zip(steps.tolist(), values[:, column].tolist())) for column, name in enumerate(names)}


def val_series(run: Run, task: str, metric: str) -> dict[int, float]:
    """``{step: value}`` of one validation metric from a run's ``metrics.jsonl``."""
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["metrics"][task][metric] for r in records if r["split"] == "val"}


def panel_grid(count: int, sharey: bool) -> tuple[Figure, np.ndarray]:
    """A figure with ``count`` panels, at most ``PANELS_PER_ROW`` a row, sharing x (and y when ``sharey``)."""
    columns = min(PANELS_PER_ROW, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns + 1.8, 3.2 * rows + 1.0), dpi=100, squeeze=False,
                             sharex=True, sharey=sharey, layout="constrained")
    for ax in axes.flat[count:]:
        ax.axis("off")
    for ax in axes.flat[max(0, count - columns):count]:  # the lowest panel of each column shows the step ticks
        ax.xaxis.set_tick_params(labelbottom=True)
    return fig, axes


def draw_mean(ax: Axes, curve: SeedMean, label: str, style: dict) -> None:
    """The mean line, and a band of ± one std when there are several seeds."""
    ax.plot(curve.steps, curve.mean, label=label, **style)
    if curve.seeds > 1:
        ax.fill_between(curve.steps, curve.mean - curve.std, curve.mean + curve.std, color=style["color"], alpha=0.15,
                        linewidth=0)


def figure_legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend right of the panels with every labelled line (each label once)."""
    handles = {line.get_label(): line for ax in axes.flat for line in ax.get_lines()}
    fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=8)


def step_panels(runs: Sequence[Run], csv_name: str, quantity: str, stem: str, log_scale: bool = False) -> Plot:
    """One panel per configuration with a line per column of each run's ``csv_name`` (mean over seeds)."""
    series = {label: [step_series(run, csv_name) for run in group] for label, group in runs_per_config(runs).items()}
    names = list(dict.fromkeys(name for per_seed in series.values() for name in per_seed[0]))
    fig, axes = panel_grid(len(series), sharey=True)
    rows, positive = [], True
    for ax, (label, per_seed) in zip(axes.flat, series.items()):
        for name in per_seed[0]:
            curve = seed_mean([seed[name] for seed in per_seed])
            draw_mean(ax, curve, name, series_style(names.index(name), len(names), len(curve.steps)))
            rows += [[label, int(step), name, float(mean), float(std), curve.seeds]
                     for step, mean, std in zip(curve.steps, curve.mean, curve.std)]
            positive = positive and bool((curve.mean > 0).all())
        ax.set_title(f"{label} ({len(per_seed)} seed{'s' if len(per_seed) > 1 else ''})", fontsize=9)
        ax.grid(alpha=0.3)
    if log_scale and positive:
        axes[0, 0].set_yscale("log")  # shared: every panel
    fig.supxlabel("step", fontsize=9)
    fig.supylabel(quantity, fontsize=9)
    fig.suptitle(f"{quantity}: {SEED_NOTE}", fontsize=10)
    figure_legend(fig, axes)
    column = quantity.replace(" ", "_")
    return Plot(stem, fig, ["config", "step", "task", f"{column}_mean", f"{column}_std", "seeds"], rows)


def weights_comparison(runs: Sequence[Run]) -> Plot:
    return step_panels(runs, "weights.csv", "task weight", "weights_comparison")


def losses_comparison(runs: Sequence[Run]) -> Plot:
    return step_panels(runs, "losses.csv", "training loss", "losses_comparison", log_scale=True)


def direction(summary: dict, task: str, metric: str) -> str:
    return "↑" if summary["higher_is_better"][task][metric] else "↓"


def metric_curves(runs: Sequence[Run]) -> Plot:
    """One panel per task: its primary validation metric against the step, one line per configuration."""
    configs = runs_per_config(runs)
    summary = runs[0].summary
    primary = summary["primary_metric"]
    fig, axes = panel_grid(len(primary), sharey=False)  # each panel has its own metric, so only x is shared
    rows = []
    for ax, (task, metric) in zip(axes.flat, primary.items()):
        for index, (label, group) in enumerate(configs.items()):
            curve = seed_mean([val_series(run, task, metric) for run in group])
            draw_mean(ax, curve, label, series_style(index, len(configs), len(curve.steps)))
            rows += [[label, int(step), task, metric, float(mean), float(std), curve.seeds]
                     for step, mean, std in zip(curve.steps, curve.mean, curve.std)]
        ax.set_title(f"{task} {metric} {direction(summary, task, metric)} (val)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.supxlabel("step", fontsize=9)
    fig.suptitle(f"primary validation metric: {SEED_NOTE}", fontsize=10)
    figure_legend(fig, axes)
    return Plot("metric_curves", fig, ["config", "step", "task", "metric", "mean", "std", "seeds"], rows)


def better_arrow(ax: Axes, higher_x: bool, higher_y: bool) -> None:
    """``better`` and an arrow pointing the way in which both metrics improve, above the top right corner of
    ``ax`` (clear of the data)."""
    arrow = {(True, True): "↗", (False, True): "↖", (True, False): "↘", (False, False): "↙"}[(higher_x, higher_y)]
    ax.set_title(f"better {arrow}", loc="right", fontsize=11, color="0.3")


def front_staircase(points: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """The corners of the boundary of the region that the two-objective front ``points`` dominates: the points in
    order of their first objective, from worst to best, with a corner between neighbours (first point's x, next
    point's y)."""
    sign = np.where(np.asarray(higher_is_better), 1.0, -1.0)
    ordered = points[np.argsort(points[:, 0] * sign[0], kind="stable")]
    corners = [ordered[0]]
    for previous, point in zip(ordered[:-1], ordered[1:]):
        corners += [np.array([previous[0], point[1]]), point]
    return np.array(corners)


def tradeoff(runs: Sequence[Run], front: Sequence[str] = ()) -> Plot:
    """The first two tasks' primary test metrics: per configuration its mean ± std over seeds (large marker with
    error bars) and each seed (small markers). With exactly two tasks, the configurations named in ``front`` (the
    Pareto front) have filled markers joined by the front's staircase, the others hollow markers."""
    summary = runs[0].summary
    (task_a, metric_a), (task_b, metric_b) = list(summary["primary_metric"].items())[:2]
    higher = [summary["higher_is_better"][task_a][metric_a], summary["higher_is_better"][task_b][metric_b]]
    mark_front = len(summary["primary_metric"]) == 2 and bool(front)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100, layout="constrained")
    rows, front_means = [], []
    for index, (label, group) in enumerate(runs_per_config(runs).items()):
        points = np.array([[test_metrics(r.summary)[task_a][metric_a], test_metrics(r.summary)[task_b][metric_b]]
                           for r in group])
        mean = points.mean(axis=0)
        std = points.std(axis=0, ddof=1) if len(points) > 1 else np.zeros(2)
        color, marker = f"C{index % 10}", MARKERS[index % len(MARKERS)]
        on_front = mark_front and label in front
        if on_front:
            front_means.append(mean)
        ax.scatter(points[:, 0], points[:, 1], s=16, color=color, marker=marker, alpha=0.5)
        name = f"{label} ({len(points)} seed{'s' if len(points) > 1 else ''}){', front' if on_front else ''}"
        hollow = mark_front and not on_front
        ax.errorbar(mean[0], mean[1], xerr=std[0], yerr=std[1], color=color, marker=marker, markersize=9, capsize=3,
                    markeredgecolor=color if hollow else "black", markerfacecolor="white" if hollow else color,
                    label=name)
        rows += [[label, r.summary.get("seed", 0), float(a), float(b)] for r, (a, b) in zip(group, points)]
    if len(front_means) > 1:
        staircase = front_staircase(np.array(front_means), higher)
        ax.plot(staircase[:, 0], staircase[:, 1], color="black", linestyle="--", linewidth=1.2, zorder=1,
                label="Pareto front of the means")
    better_arrow(ax, *higher)
    ax.set_xlabel(f"{task_a} {metric_a} {direction(summary, task_a, metric_a)} (test)")
    ax.set_ylabel(f"{task_b} {metric_b} {direction(summary, task_b, metric_b)} (test)")
    fig.suptitle("trade-off: mean ± std over seeds (large), each seed (small)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return Plot("tradeoff", fig, ["config", "seed", f"{task_a}/{metric_a}", f"{task_b}/{metric_b}"], rows)


def pareto_parallel(runs: Sequence[Run], front: Sequence[str]) -> Plot:
    """Parallel coordinates of each configuration's mean primary test metrics (over seeds): one vertical axis per
    task, scaled so that the worst configuration sits at 0 and the best at 1 (up is better on every axis; a tie
    sits at 0.5), with each axis's worst and best values written at its ends. The configurations in ``front`` are
    coloured lines with markers, the others grey."""
    summary = runs[0].summary
    primary = list(summary["primary_metric"].items())
    configs = runs_per_config(runs)
    means = np.array([[statistics.fmean(test_metrics(r.summary)[task][metric] for r in group)
                       for task, metric in primary] for group in configs.values()])
    higher = np.array([summary["higher_is_better"][task][metric] for task, metric in primary])
    best = np.where(higher, means.max(axis=0), means.min(axis=0))
    worst = np.where(higher, means.min(axis=0), means.max(axis=0))
    span = best - worst
    scaled = np.where(span != 0, (means - worst) / np.where(span != 0, span, 1.0), 0.5)
    fig, ax = plt.subplots(figsize=(1.9 * len(primary) + 3.5, 5.0), dpi=100, layout="constrained")
    x = np.arange(len(primary))
    rows, front_index = [], 0
    for label, values, raw in zip(configs, scaled, means):
        if label in front:
            style = {"color": f"C{front_index % 10}", "marker": MARKERS[front_index % len(MARKERS)],
                     "linewidth": 2.2, "markersize": 7, "zorder": 3, "label": f"{label} (front)"}
            front_index += 1
        else:
            style = {"color": "0.65", "linewidth": 1.0, "zorder": 2, "label": label}
        ax.plot(x, values, **style)
        rows += [[label, f"{task}/{metric}", float(value), float(scale), label in front]
                 for (task, metric), value, scale in zip(primary, raw, values)]
    for position, low, high in zip(x, worst, best):
        ax.axvline(position, color="0.3", linewidth=0.8, zorder=1)
        ax.annotate(f"{high:.4g}", (position, 1.0), xytext=(0, 8), textcoords="offset points", ha="center",
                    fontsize=8)
        ax.annotate(f"{low:.4g}", (position, 0.0), xytext=(0, -14), textcoords="offset points", ha="center",
                    fontsize=8)
    ax.set_xticks(x, [f"{task}\n{metric} {direction(summary, task, metric)}" for task, metric in primary], fontsize=9)
    ax.tick_params(axis="x", pad=18, length=0)
    ax.set_yticks([0, 1], ["worst", "best"], fontsize=8)
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.3, len(primary) - 0.7)
    for spine in ("top", "right", "bottom"):
        ax.spines[spine].set_visible(False)
    fig.suptitle("primary test metrics (mean over seeds): each axis from the worst configuration (bottom) to the best "
                 "(top)", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return Plot("pareto_parallel", fig, ["config", "metric", "mean", "scaled", "pareto"], rows)


def mean_cosines(group: Sequence[Run]) -> tuple[np.ndarray, int]:
    """The mean over ``group``'s runs with gradient diagnostics of their mean cosine matrices (a NaN or null entry
    is left out of its cell's mean), and the number of those runs."""
    matrices = [np.array(run.summary["diagnostics"]["gradients"]["mean_cosine"], dtype=float) for run in group
                if "gradients" in run.summary.get("diagnostics", {})]
    stacked = np.stack(matrices)
    finite = np.isfinite(stacked)
    sums = np.where(finite, stacked, 0.0).sum(axis=0)
    counts = finite.sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), len(matrices)


def gradient_cosines(runs: Sequence[Run]) -> Plot:
    """One heatmap panel per configuration with gradient diagnostics: the mean cosine between each pair of task
    gradients (:func:`mtl_train.diagnostics.plots.cosine_heatmap`: red below 0, conflict; blue above, agreement)."""
    tasks = runs[0].summary["tasks"]
    configs = {label: group for label, group in runs_per_config(runs).items()
               if any("gradients" in run.summary.get("diagnostics", {}) for run in group)}
    columns = min(PANELS_PER_ROW, len(configs))
    panel_rows = math.ceil(len(configs) / columns)
    size = 0.6 * len(tasks) + 1.8
    fig, axes = plt.subplots(panel_rows, columns, figsize=(size * columns + 1.2, size * panel_rows + 0.6), dpi=100,
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(configs):]:
        ax.axis("off")
    rows = []
    for ax, (label, group) in zip(axes.flat, configs.items()):
        cosines, count = mean_cosines(group)
        cosine_heatmap(ax, torch.from_numpy(cosines), tasks, title=f"{label} ({count} run{'s' if count > 1 else ''})")
        rows += [[label, tasks[i], tasks[j], float(value), count] for (i, j), value in np.ndenumerate(cosines)]
    fig.suptitle("mean cosine between task gradients (mean over seeds)", fontsize=10)
    return Plot("gradient_cosines_comparison", fig, ["config", "task_a", "task_b", "mean_cosine", "runs"], rows)


def comparison_plots(runs: Sequence[Run], front: Sequence[str] = ()) -> list[Plot]:
    """Every comparison plot of ``runs`` (all of one task set): the trade-off with two or more tasks, the parallel
    coordinates with three or more and a front, the cosine heatmaps when some run has gradient diagnostics.
    ``front``: the configurations on the Pareto front."""
    if not runs:
        return []
    plots = [weights_comparison(runs), losses_comparison(runs), metric_curves(runs)]
    tasks = len(runs[0].summary["primary_metric"])
    if tasks >= 2:
        plots.append(tradeoff(runs, front))
    if tasks > 2 and front:
        plots.append(pareto_parallel(runs, front))
    if any("gradients" in run.summary.get("diagnostics", {}) for run in runs):
        plots.append(gradient_cosines(runs))
    return plots


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def csv_bytes(header: list[str], rows: list[list]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def plot_files(plots: Sequence[Plot], suffix: str = "") -> dict[str, bytes]:
    """``{"<stem><suffix>.png": PNG, "<stem><suffix>.csv": CSV}`` of every plot; closes the figures."""
    files = {}
    for plot in plots:
        files[f"{plot.stem}{suffix}.png"] = png_bytes(plot.figure)
        files[f"{plot.stem}{suffix}.csv"] = csv_bytes(plot.header, plot.rows)
    return files
