"""The per-task metrics table printed at the end of a run."""

from __future__ import annotations

from rich.table import Table


def metrics_table(summary: dict) -> Table:
    """Rows: task x metric; columns: final val, final test, best val (and the step it was reached); Δm (test,
    against single-task baselines) as the caption when the run has it."""
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
    if summary.get("delta_m", {}).get("value") is not None:
        per_task = ", ".join(f"{task} {format_percent(v)}" for task, v in summary["delta_m"]["per_task"].items())
        table.caption = f"Δm vs single-task baselines: {format_percent(summary['delta_m']['value'])} ({per_task})"
    return table


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"
