"""The per-task metrics table printed at the end of a run, laid out to fit an 80-column terminal."""

from __future__ import annotations

from rich import box
from rich.table import Table


def metrics_table(summary: dict) -> Table:
    """One row per task and metric; columns: final val, final test, best val and the step it was reached.

    The layout has no vertical rules, and names fold (never truncate). With 4-decimal values, the four ECG
    tasks fit in 80 columns. Δm (test, against single-task baselines) is the caption when the run has it."""
    table = Table(title=f"{summary['weighting']} - {summary['steps']} steps in {summary['wall_time_s']:.1f} s on "
                        f"{summary['device']}", box=box.SIMPLE_HEAD)
    for column in ("task", "metric"):
        table.add_column(column, overflow="fold")
    for column in ("final val", "final test", "best val", "at step"):
        table.add_column(column, justify="right", overflow="fold")
    for task, values in summary["final"]["val"].items():
        for i, (metric, value) in enumerate(values.items()):
            arrow = "↑" if summary["higher_is_better"][task][metric] else "↓"
            best = summary["best"][task][metric]
            table.add_row(task if i == 0 else "", f"{metric} {arrow}", f"{value:.4f}",
                          f"{summary['final']['test'][task][metric]:.4f}", f"{best['value']:.4f}", str(best["step"]))
    if summary.get("delta_m", {}).get("value") is not None:
        per_task = ", ".join(f"{task} {format_percent(v)}" for task, v in summary["delta_m"]["per_task"].items())
        table.caption = f"Δm vs single-task baselines: {format_percent(summary['delta_m']['value'])} ({per_task})"
    return table


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"
