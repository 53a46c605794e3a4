"""Comparison plots of many runs (of one task set), each saved as PNG next to the CSV of the numbers it shows.

- ``weights_comparison``: task-weight trajectories, one panel per configuration;
- ``losses_comparison``: training-loss curves, one panel per configuration;
- ``metric_curves``: one panel per task, its primary validation metric against the step, one line per configuration;
- ``tradeoff``: the first two tasks' primary test metrics against each other, per configuration.

Curves are the mean over a configuration's seeds, with a band of ± one sample standard deviation; the trade-off
plot shows each configuration's mean with ± std error bars and every seed as a small marker, and ``better`` with
an arrow toward the corner where both metrics are better. Panels of the same quantity share their axes. Lines that
coincide stay visible through :func:`mtl_train.plots.series_style`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mtl_train.delta_m import test_metrics  # noqa: E402
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


def tradeoff(runs: Sequence[Run]) -> Plot:
    """The first two tasks' primary test metrics: per configuration its mean ± std over seeds (large marker with
    error bars) and each seed (small markers)."""
    summary = runs[0].summary
    (task_a, metric_a), (task_b, metric_b) = list(summary["primary_metric"].items())[:2]
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100, layout="constrained")
    rows = []
    for index, (label, group) in enumerate(runs_per_config(runs).items()):
        points = np.array([[test_metrics(r.summary)[task_a][metric_a], test_metrics(r.summary)[task_b][metric_b]]
                           for r in group])
        mean = points.mean(axis=0)
        std = points.std(axis=0, ddof=1) if len(points) > 1 else np.zeros(2)
        color, marker = f"C{index % 10}", MARKERS[index % len(MARKERS)]
        ax.scatter(points[:, 0], points[:, 1], s=16, color=color, marker=marker, alpha=0.5)
        ax.errorbar(mean[0], mean[1], xerr=std[0], yerr=std[1], color=color, marker=marker, markersize=9, capsize=3,
                    markeredgecolor="black", label=f"{label} ({len(points)} seed{'s' if len(points) > 1 else ''})")
        rows += [[label, r.summary.get("seed", 0), float(a), float(b)] for r, (a, b) in zip(group, points)]
    better_arrow(ax, summary["higher_is_better"][task_a][metric_a], summary["higher_is_better"][task_b][metric_b])
    ax.set_xlabel(f"{task_a} {metric_a} {direction(summary, task_a, metric_a)} (test)")
    ax.set_ylabel(f"{task_b} {metric_b} {direction(summary, task_b, metric_b)} (test)")
    fig.suptitle("trade-off: mean ± std over seeds (large), each seed (small)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(rows), 3), fontsize=8)
    return Plot("tradeoff", fig, ["config", "seed", f"{task_a}/{metric_a}", f"{task_b}/{metric_b}"], rows)


def comparison_plots(runs: Sequence[Run]) -> list[Plot]:
    """Every comparison plot of ``runs`` (all of one task set; the trade-off only with at least two tasks)."""
    if not runs:
        return []
    plots = [weights_comparison(runs), losses_comparison(runs), metric_curves(runs)]
    if len(runs[0].summary["primary_metric"]) >= 2:
        plots.append(tradeoff(runs))
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
