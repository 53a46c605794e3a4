"""Comparison plots of many runs, each saved as PNG next to the CSV of the numbers it shows.

- ``weights_comparison``: task-weight trajectories, one panel per configuration (its first seed);
- ``losses_comparison``: training-loss curves, one panel per configuration;
- ``metric_curves``: every task's primary validation metric against the step, one line per configuration;
- ``tradeoff``: a two-task trade-off scatter (task A's vs task B's primary test metric), one point per run.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

from mtl_train.delta_m import test_metrics  # noqa: E402
from mtl_train.engine.outputs import read_step_csv  # noqa: E402

if TYPE_CHECKING:  # report.py imports this module to draw its plots
    from mtl_train.report import Run


def first_seed_per_config(runs: Sequence[Run]) -> dict[str, Run]:
    chosen: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.summary.get("seed", 0)):
        chosen.setdefault(run.label, run)
    return chosen


def write_rows(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def step_panels(runs: Sequence[Run], csv_name: str, ylabel: str, out_dir: Path, stem: str) -> Path:
    """One panel per configuration with a line per task from each run's ``csv_name``; PNG + long-format CSV."""
    chosen = first_seed_per_config(runs)
    columns = min(3, len(chosen))
    rows_of_panels = math.ceil(len(chosen) / columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.5 * columns, 3.2 * rows_of_panels), dpi=100,
                             squeeze=False)
    table = []
    for ax, (label, run) in zip(axes.flat, chosen.items()):
        tasks, steps, values = read_step_csv(run.run_dir / csv_name)
        for column, task in enumerate(tasks):
            ax.plot(steps.numpy(), values[:, column].numpy(), label=task, linewidth=1.0)
            table += [[label, int(s), task, float(v)] for s, v in zip(steps, values[:, column])]
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    axes[0, 0].set_ylabel(ylabel)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / f"{stem}.png"
    fig.savefig(png)
    plt.close(fig)
    write_rows(out_dir / f"{stem}.csv", ["config", "step", "task", ylabel.replace(" ", "_")], table)
    return png


def metric_curves(runs: Sequence[Run], out_dir: Path) -> Path:
    """Each task's primary validation metric against the step, one line per configuration."""
    chosen = first_seed_per_config(runs)
    primary = next(iter(chosen.values())).summary["primary_metric"]
    fig, axes = plt.subplots(1, len(primary), figsize=(4.5 * len(primary), 3.2), dpi=100, squeeze=False)
    table = []
    for ax, (task, metric) in zip(axes.flat, primary.items()):
        for label, run in chosen.items():
            records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
            points = [(r["step"], r["metrics"][task][metric]) for r in records if r["split"] == "val"]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label, linewidth=1.0)
            table += [[label, step, task, metric, value] for step, value in points]
        ax.set_title(f"{task} {metric} (val)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "metric_curves.png"
    fig.savefig(png)
    plt.close(fig)
    write_rows(out_dir / "metric_curves.csv", ["config", "step", "task", "metric", "value"], table)
    return png


def tradeoff(runs: Sequence[Run], out_dir: Path) -> Path:
    """Task A's vs task B's primary test metric (the first two tasks), one point per run."""
    primary = runs[0].summary["primary_metric"]
    (task_a, metric_a), (task_b, metric_b) = list(primary.items())[:2]
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    table = []
    for label in dict.fromkeys(run.label for run in runs):
        points = [(test_metrics(r.summary)[task_a][metric_a], test_metrics(r.summary)[task_b][metric_b],
                   r.summary.get("seed", 0)) for r in runs if r.label == label]
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=label)
        table += [[label, seed, a, b] for a, b, seed in points]
    ax.set_xlabel(f"{task_a} {metric_a} (test)")
    ax.set_ylabel(f"{task_b} {metric_b} (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "tradeoff.png"
    fig.savefig(png)
    plt.close(fig)
    write_rows(out_dir / "tradeoff.csv", ["config", "seed", f"{task_a}/{metric_a}", f"{task_b}/{metric_b}"], table)
    return png


def plot_comparison(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """Every comparison plot (the trade-off only when there are at least two tasks)."""
    if not runs:
        return []
    pngs = [step_panels(runs, "weights.csv", "task weight", out_dir, "weights_comparison"),
            step_panels(runs, "losses.csv", "training loss", out_dir, "losses_comparison"),
            metric_curves(runs, out_dir)]
    if len(runs[0].summary["primary_metric"]) >= 2:
        pngs.append(tradeoff(runs, out_dir))
    return pngs
