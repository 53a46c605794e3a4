"""Comparison tables across runs: one row per configuration, mean ± std over seeds of every per-task metric.

Runs are found as ``summary.json`` files (a run directory, or a sweep directory holding one per job). A run's
configuration is its Hydra overrides (``.hydra/overrides.yaml``) without ``seed=...``, so the seeds of one
configuration are averaged together. Failed or unfinished jobs (no ``summary.json``) are listed and skipped.

``mtl-train-report DIR...`` rebuilds the table, ``comparison.csv``, ``comparison.md`` and the comparison plots
(:mod:`mtl_train.report_plots`) from any run or sweep directories, including partly failed sweeps; the sweep callback (:mod:`mtl_train.hydra_callbacks`) calls the same
code at the end of a sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from mtl_train.delta_m import delta_m, load_baselines, test_metrics
from mtl_train.errors import ConfigError
from mtl_train.report_plots import plot_comparison


@dataclass
class Run:
    """One finished run: its directory, its overrides (without seed and output settings) and its summary."""

    run_dir: Path
    overrides: list[str]
    summary: dict
    label: str = ""


def run_overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides, without ``seed=``, ``hydra.*`` and ``trainer.progress=``."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return [o for o in overrides or [] if not o.startswith(("seed=", "hydra.", "trainer.progress="))]


def label_runs(runs: Sequence[Run]) -> None:
    """Label each run by the overrides that differ between runs (``default`` when none do)."""
    common = set.intersection(*(set(run.overrides) for run in runs)) if len(runs) > 1 else set()
    for run in runs:
        run.label = " ".join(o for o in run.overrides if o not in common) or "default"


def find_runs(dirs: Sequence[Path]) -> tuple[list[Run], list[Path]]:
    """Every finished run under ``dirs`` and the job directories that have no ``summary.json`` (failed/unfinished)."""
    runs, unfinished = [], []
    for root in dirs:
        configs = Path(root).rglob(".hydra/config.yaml")
        for config in sorted(configs, key=lambda p: [int(part) if part.isdigit() else part for part in p.parts]):
            run_dir = config.parent.parent
            summary_file = run_dir / "summary.json"
            if not summary_file.is_file():
                unfinished.append(run_dir)
                continue
            runs.append(Run(run_dir, run_overrides(run_dir), json.loads(summary_file.read_text())))
    label_runs(runs)
    return runs, unfinished


def metric_values(summary: dict, split: str = "test", baselines: dict | None = None) -> dict[str, float]:
    """``{"task/metric": value}`` of the final metrics on ``split`` (on the test split, of the validation-selected
    model when the run has one: :func:`~mtl_train.delta_m.test_metrics`), plus the wall time and, on the test split,
    Δm (in %) against ``baselines`` or else the run's own ``delta_m``."""
    reported = test_metrics(summary) if split == "test" else summary["final"][split]
    values = {f"{task}/{name}": value for task, metrics in reported.items() for name, value in metrics.items()
              if name != "loss"}
    values["wall_time_s"] = summary["wall_time_s"]
    if split == "test" and not summary.get("stl"):
        result = delta_m(summary, baselines) if baselines is not None else summary.get("delta_m")
        if result is not None and result["value"] is not None:
            values["delta_m_%"] = result["value"]
    return values


def comparison_rows(runs: Sequence[Run], split: str = "test", baselines: dict | None = None) -> tuple[list[str], list[dict]]:
    """Columns and one row per configuration: ``{"config", "seeds", column: (mean, std)}`` (std 0 for one seed).

    Δm (``delta_m_%``) is the mean over seeds of each run's Δm (against ``baselines`` when given)."""
    by_label: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(metric_values(run.summary, split, baselines))
    trailing = ["delta_m_%", "wall_time_s"]
    columns = sorted({c for values in by_label.values() for v in values for c in v if c not in trailing})
    columns += [c for c in trailing if any(c in v for values in by_label.values() for v in values)]
    rows = []
    for label, values in by_label.items():
        row = {"config": label, "seeds": len(values)}
        for column in columns:
            samples = [v[column] for v in values if column in v]
            if samples:
                row[column] = (statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0)
        rows.append(row)
    return columns, rows


def format_cell(cell: tuple[float, float] | None) -> str:
    return "" if cell is None else f"{cell[0]:.4f} ± {cell[1]:.4f}"


def write_comparison(columns: list[str], rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """``comparison.csv`` (mean and std columns) and ``comparison.md`` (mean ± std) in ``out_dir``."""
    csv_path, md_path = out_dir / "comparison.csv", out_dir / "comparison.md"
    with open(csv_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["config", "seeds", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))])
        for row in rows:
            cells = [f"{v:.6g}" if c in row else "" for c in columns for v in row.get(c, (0.0, 0.0))]
            writer.writerow([row["config"], row["seeds"], *cells])
    lines = ["| config | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    lines += [f"| {row['config']} | {row['seeds']} | " + " | ".join(format_cell(row.get(c)) for c in columns) + " |"
              for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def comparison_table(columns: list[str], rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    table.add_column("config", no_wrap=True)
    for column in ("seeds", *columns):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["config"], str(row["seeds"]), *(format_cell(row.get(c)) for c in columns))
    return table


def report(dirs: Sequence[Path], out_dir: Path, console: Console | None = None, baselines: Path | None = None) -> list[dict]:
    """Build, print and write the comparison of every run under ``dirs``; return its rows.

    Δm is computed against ``baselines`` (see :func:`mtl_train.delta_m.load_baselines`) when given, else read from
    the runs' summaries. Single-task (``stl=true``) runs get a row of their own but no plot lines."""
    console = console or Console()
    runs, unfinished = find_runs(dirs)
    columns, rows = comparison_rows(runs, baselines=load_baselines(baselines) if baselines is not None else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_comparison(columns, rows, out_dir)
    pngs = plot_comparison([run for run in runs if not run.summary.get("stl")], out_dir)
    console.print(comparison_table(columns, rows, f"{len(runs)} runs, test metrics (mean ± std over seeds)"))
    for run_dir in unfinished:
        console.print(f"skipped (no summary.json: failed or unfinished): {run_dir}", highlight=False)
    console.print(f"wrote {csv_path}, {md_path} and {len(pngs)} plots (PNG + CSV)", highlight=False)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``mtl-train-report DIR... [--out OUT]``."""
    parser = argparse.ArgumentParser(prog="mtl-train-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write comparison.csv/.md (default: the first DIR)")
    parser.add_argument("--baselines", type=Path, default=None,
                        help="a baselines.json or a directory of them (from `mtl-train stl=true`): adds a Δm column")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(1, f"error: not a directory: {', '.join(map(str, missing))}\n")
    try:
        report(args.dirs, args.out or args.dirs[0], baselines=args.baselines)
    except ConfigError as error:
        parser.exit(1, f"error: {error}\n")
