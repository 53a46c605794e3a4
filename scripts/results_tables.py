"""Print the markdown tables of docs/results.md from the sweeps of ``scripts/reproduce_results.sh``.

    python scripts/results_tables.py outputs/results/multi_fashion outputs/results/multi_fashion_stl
    python scripts/results_tables.py outputs/results/ecg_full outputs/results/ecg_full_stl

One row per weighting method (mean ± std over seeds) and a first row for the single-task baselines: each task's
primary test metric (of the validation-selected model where the run selects one), Δm in % against the baselines
(positive = better than single-task learning; the runs' own ``delta_m``), and the mean training time per epoch
(evaluation excluded; a single-task row gives the time of all its single-task models together).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mtl_train.report import Run, comparison_rows, find_runs


def mean_std(cell: tuple[float, float], digits: int) -> str:
    """A ``(mean, std)`` cell of :func:`mtl_train.report.comparison_rows` as ``mean ± std``."""
    return f"{cell[0]:.{digits}f} ± {cell[1]:.{digits}f}"


def epoch_time(run: Run) -> float:
    """A run's mean training seconds per epoch; for ``stl=true``, that of all its single-task models together
    (their summaries are in ``stl/<task>/``)."""
    if not run.summary.get("stl"):
        return statistics.fmean(run.summary["epoch_time_s"])
    summaries = [json.loads((run.run_dir / "stl" / task / "summary.json").read_text()) for task in run.summary["tasks"]]
    return sum(statistics.fmean(summary["epoch_time_s"]) for summary in summaries)


def results_table(sweep: Path, stl_sweep: Path) -> str:
    """The markdown table of one sweep and its single-task baselines."""
    runs, unfinished = find_runs([sweep])
    for run_dir in unfinished:
        print(f"warning: left out (no summary.json: failed or unfinished): {run_dir}", file=sys.stderr)
    stl_runs, _ = find_runs([stl_sweep])
    first = runs[0].summary
    tasks, primary = first["tasks"], first["primary_metric"]
    digits = {task: 2 if primary[task] in ("psnr", "mae", "rmse") else 4 for task in tasks}
    arrows = {task: "↑" if first["higher_is_better"][task][primary[task]] else "↓" for task in tasks}
    metric_names = [f"{task} {primary[task]} {arrows[task]}" for task in tasks]
    header = ["method", "seeds", *metric_names, "Δm % ↑", "s / epoch"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for group in (stl_runs, runs):  # comparison_rows gives one (mean, std) row per configuration, in run order
        for row in comparison_rows(group)[1]:
            config_runs = [run for run in group if run.label == row["config"]]
            if config_runs[0].summary.get("stl"):
                method, delta = "single-task", "0"
            else:
                method = config_runs[0].summary["weighting"] if row["config"] == "default" else row["config"]
                method, delta = method.removeprefix("weighting="), mean_std(row["delta_m_%"], 2)
            metrics = [mean_std(row[f"{task}/{primary[task]}"], digits[task]) for task in tasks]
            seconds = statistics.fmean(epoch_time(run) for run in config_runs)
            cells = [method, str(row["seeds"]), *metrics, delta, f"{seconds:.3g}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the sweep over weighting methods (with baselines=)")
    parser.add_argument("stl_sweep", type=Path, help="the stl=true sweep over seeds")
    args = parser.parse_args()
    print(results_table(args.sweep, args.stl_sweep))


if __name__ == "__main__":
    main()
