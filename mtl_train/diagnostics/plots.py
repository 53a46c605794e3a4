"""Plots of the per-run diagnostics, drawn on given matplotlib axes so that a run's end-of-training PNGs
(:func:`plot_diagnostics`) and a sweep's report draw the same pictures:

- :func:`cosine_heatmap`: the mean pairwise cosine of the task gradients;
- :func:`affinity_heatmap`: the mean inter-task affinity Z_{i->j};
- :func:`conflict_panels`: the conflict fraction and the norm ratio max/min over training.

Heatmaps use a diverging colormap centred at 0 (red: conflict / harm, blue: agreement / help), each cell annotated.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
from matplotlib.axes import Axes  # noqa: E402
from torch import Tensor  # noqa: E402

from mtl_train.diagnostics.affinity import read_affinity_csv  # noqa: E402
from mtl_train.diagnostics.gradients import read_gradients_csv  # noqa: E402

COLORMAP = "RdBu"  # red below 0, blue above


def annotated_heatmap(ax: Axes, matrix: Tensor, tasks: list[str], limit: float, label: str,
                      number_format: str = ".2f") -> None:
    """``matrix`` (k, k) as colours from -``limit`` to ``limit`` (0 white), each cell annotated in
    ``number_format`` (NaN: a dash), task names on both axes, a colour bar labelled ``label``."""
    values = matrix.double().numpy()
    image = ax.imshow(values, cmap=COLORMAP, vmin=-limit, vmax=limit)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            text = "–" if math.isnan(value) else format(value, number_format)
            text = text.lstrip("-") if text != "–" and float(text) == 0 else text  # no "-0.00"
            dark = not math.isnan(value) and abs(value) > 0.6 * limit
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.85)


def cosine_heatmap(ax: Axes, matrix: Tensor, tasks: list[str], title: str = "mean cosine of task gradients") -> None:
    """The (k, k) mean gradient cosines on ``ax`` (scale -1 .. 1)."""
    annotated_heatmap(ax, matrix, tasks, 1.0, "cos(g_i, g_j)")
    ax.set_title(title)


def affinity_heatmap(ax: Axes, matrix: Tensor, tasks: list[str],
                     title: str = "mean inter-task affinity Z(i -> j)") -> None:
    """The (k, k) mean affinity on ``ax``: row i, the task stepped on; column j, the task whose loss changes
    (symmetric scale at the largest |Z|)."""
    finite = matrix[matrix.isfinite()]
    limit = float(finite.abs().max()) if finite.numel() and float(finite.abs().max()) > 0 else 1.0
    annotated_heatmap(ax, matrix, tasks, limit, "Z(i -> j): relative drop of L_j", number_format=".2g")
    ax.set_xlabel("j (loss measured)")
    ax.set_ylabel("i (step taken on)")
    ax.set_title(title)


def conflict_panels(axes: tuple[Axes, Axes], steps: Tensor, conflict: Tensor, norm_ratio: Tensor) -> None:
    """Two panels against the step: the fraction of conflicting task pairs (cos < 0), and max/min of the
    task-gradient norms (log scale)."""
    top, bottom = axes
    top.plot(steps.numpy(), conflict.numpy(), marker="o", markersize=3, color="C3")
    top.set_ylim(-0.05, 1.05)
    top.set_ylabel("conflicting pairs")
    top.set_title("gradient conflict over training")
    top.grid(alpha=0.3)
    bottom.plot(steps.numpy(), norm_ratio.numpy(), marker="o", markersize=3, color="C0")
    if bool((norm_ratio[norm_ratio.isfinite()] > 0).all()) and bool(norm_ratio.isfinite().any()):
        bottom.set_yscale("log")
    bottom.set_ylabel("norm ratio max/min")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3, which="both")


def plot_diagnostics(output_dir: Path) -> list[Path]:
    """``gradient_cosines.png`` and ``gradient_conflict.png`` from ``gradients.csv``, ``affinity.png`` from
    ``affinity.csv``, for those of the files the run wrote; returns the paths written."""
    output_dir = Path(output_dir)
    written = []
    if (output_dir / "gradients.csv").is_file():
        samples = read_gradients_csv(output_dir / "gradients.csv")
        size = 1.6 + 1.1 * len(samples.tasks)
        fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=100, layout="constrained")
        cosine_heatmap(ax, samples.mean_cosines(), samples.tasks,
                       f"mean cosine of task gradients ({len(samples.steps)} samples)")
        written.append(save(fig, output_dir / "gradient_cosines.png"))
        fig, axes = plt.subplots(2, 1, figsize=(8, 5), dpi=100, sharex=True, layout="constrained")
        conflict_panels(axes, samples.steps, samples.conflict, samples.norm_ratio())
        written.append(save(fig, output_dir / "gradient_conflict.png"))
    if (output_dir / "affinity.csv").is_file():
        tasks, steps, affinity = read_affinity_csv(output_dir / "affinity.csv")
        size = 1.6 + 1.1 * len(tasks)
        fig, ax = plt.subplots(figsize=(size + 1.8, size + 0.4), dpi=100, layout="constrained")
        affinity_heatmap(ax, affinity.nanmean(dim=0), tasks, f"mean inter-task affinity ({len(steps)} samples)")
        written.append(save(fig, output_dir / "affinity.png"))
    return written


def save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path)
    plt.close(fig)
    return path
