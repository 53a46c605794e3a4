"""PNG plots of a run: task-weight trajectories and loss curves, read back from the run's CSV files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

from mtl_train.engine.outputs import read_step_csv  # noqa: E402


def plot_step_csv(csv_path: Path, png_path: Path, ylabel: str, log_scale: bool = False) -> None:
    """One line per task column of ``csv_path`` against the step, saved to ``png_path``."""
    tasks, steps, values = read_step_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for column, task in enumerate(tasks):
        ax.plot(steps.numpy(), values[:, column].numpy(), label=task, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale and len(steps) and bool((values > 0).all()):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def plot_run(output_dir: Path) -> list[Path]:
    """Write ``weights.png`` and ``losses.png`` into ``output_dir``; return their paths."""
    output_dir = Path(output_dir)
    weights_png, losses_png = output_dir / "weights.png", output_dir / "losses.png"
    plot_step_csv(output_dir / "weights.csv", weights_png, "task weight")
    plot_step_csv(output_dir / "losses.csv", losses_png, "training loss", log_scale=True)
    return [weights_png, losses_png]
