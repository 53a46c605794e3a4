"""The per-task metrics table printed at the end of a run."""

from __future__ import annotations

from rich.table import Table


def metrics_table(summary: dict) -> Table:
    """Rows: task x metric; columns: final val, final test, best val (and the step it was reached)."""
    table = Table(title=f"{summary['weighting']} - {summary['steps']} steps in {summary['wall_time_s']:.1f} s on {summary['device']}")
    for column in ("task", "metric", "val (final)", "test (final)", "val (best)", "best at step"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, values in summary["final"]["val"].items():
        for i, (metric, value) in enumerate(values.items()):
            arrow = "↑" if summary["higher_is_better"][task][metric] else "↓"
            best = summary["best"][task][metric]
            table.add_row(
                task if i == 0 else "", f"{metric} {arrow}", f"{value:.4f}", f"{summary['final']['test'][task][metric]:.4f}",
                f"{best['value']:.4f}", str(best["step"]),
            )
    return table
