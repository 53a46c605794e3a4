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
from collections.abc import Sequence
from pathlib import Path

from mtl_train.delta_m import test_metrics
from mtl_train.report import Run, find_runs


def mean_std(values: Sequence[float], digits: int) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def stl_epoch_time(run: Run) -> float:
    """The seconds per epoch of all the single-task models of an ``stl=true`` run together (``stl/<task>/``)."""
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
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        method = run.summary["weighting"] if run.label == "default" else run.label.removeprefix("weighting=")
        by_method.setdefault(method, []).append(run)

    def metric_cells(summaries: Sequence[dict]) -> list[str]:
        digits = {task: 2 if primary[task] in ("psnr", "mae", "rmse") else 4 for task in tasks}
        return [mean_std([test_metrics(s)[task][primary[task]] for s in summaries], digits[task]) for task in tasks]

    arrows = {task: "↑" if first["higher_is_better"][task][primary[task]] else "↓" for task in tasks}
    header = ["method", "seeds", *(f"{task} {primary[task]} {arrows[task]}" for task in tasks), "Δm % ↑", "s / epoch"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    stl_summaries = [run.summary for run in stl_runs]
    lines.append("| " + " | ".join(["single-task", str(len(stl_runs)), *metric_cells(stl_summaries), "0",
                                    f"{statistics.fmean(stl_epoch_time(r) for r in stl_runs):.3g}"]) + " |")
    for method, method_runs in by_method.items():
        summaries = [run.summary for run in method_runs]
        cells = [method, str(len(summaries)), *metric_cells(summaries),
                 mean_std([s["delta_m"]["value"] for s in summaries], 2),
                 f"{statistics.fmean(statistics.fmean(s['epoch_time_s']) for s in summaries):.3g}"]
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
