"""PNG plots of a run: task-weight trajectories and loss curves, read back from the run's CSV files.

Lines that coincide (equal weighting gives every task the weight 1) must stay visible, so each series gets its own
colour, dash pattern and marker, markers on different steps, and a line width that narrows from the first series to
the last (a later line drawn over an earlier, equal one leaves the earlier one showing at its edges).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
from matplotlib.figure import Figure  # noqa: E402

from mtl_train.diagnostics.plots import plot_diagnostics  # noqa: E402
from mtl_train.engine.outputs import read_step_csv  # noqa: E402

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MARKERS_PER_LINE = 8


def series_style(index: int, count: int, points: int) -> dict:
    """Matplotlib line keywords for series ``index`` of ``count``, drawn over ``points`` points, that tell it
    apart from the others where their values coincide."""
    every = max(count, points // MARKERS_PER_LINE)  # at least one step between the markers of each series
    return {"color": f"C{index % 10}", "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
            "marker": MARKERS[index % len(MARKERS)], "markevery": (index % max(1, points), every), "markersize": 4,
            "linewidth": 1.0 + 1.5 * (count - 1 - index) / max(1, count - 1)}


def step_figure(csv_path: Path, ylabel: str, log_scale: bool = False) -> Figure:
    """One line per task column of ``csv_path`` against the step (log y when ``log_scale`` and all values > 0)."""
    tasks, steps, values = read_step_csv(csv_path)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100, layout="constrained")
    for column, task in enumerate(tasks):
        ax.plot(steps.numpy(), values[:, column].numpy(), label=task, **series_style(column, len(tasks), len(steps)))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale and len(steps) and bool((values > 0).all()):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper")  # beside the axes, where it hides no line
    return fig


def save_figure(fig: Figure, png_path: Path) -> None:
    fig.savefig(png_path)
    plt.close(fig)


def plot_run(output_dir: Path, diagnostics: bool = False) -> list[Path]:
    """Write ``weights.png`` and ``losses.png`` into ``output_dir`` (and, with ``diagnostics``, the plots of
    :func:`~mtl_train.diagnostics.plots.plot_diagnostics`); return their paths."""
    output_dir = Path(output_dir)
    weights_png, losses_png = output_dir / "weights.png", output_dir / "losses.png"
    save_figure(step_figure(output_dir / "weights.csv", "task weight"), weights_png)
    save_figure(step_figure(output_dir / "losses.csv", "training loss", log_scale=True), losses_png)
    return [weights_png, losses_png, *(plot_diagnostics(output_dir) if diagnostics else [])]
