"""Comparison tables across runs: one row per configuration, mean ± std over seeds of every per-task metric.

Runs are found as ``summary.json`` files (a run directory, or a sweep directory holding one per job). A run's
configuration is its Hydra overrides (``.hydra/overrides.yaml``) without the keys that do not change its result
(``seed=``, ``hydra.*``, ``trainer.resume``, ``trainer.progress``, ...), so the seeds of one configuration, resumed
jobs included, are averaged together. Runs of different task sets get a table (and plots) of their own. Failed or
unfinished jobs (no ``summary.json``) are listed and skipped.

``mtl-train-report DIR...`` rebuilds the table, ``comparison.csv``, ``comparison.md`` and the comparison plots
(:mod:`mtl_train.report_plots`) from any run or sweep directories, including partly failed sweeps; the sweep
callback (:mod:`mtl_train.hydra_callbacks`) calls the same code at the end of a sweep. Every output is computed
before the first file is written, and each file is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from mtl_train.delta_m import delta_m, load_baselines, test_metrics
from mtl_train.errors import ConfigError, UserError
from mtl_train.report_plots import comparison_plots, plot_files
from mtl_train.utils.io import atomic_write

# Override keys that leave a run's result unchanged: where and how it was run, logged or shown. A key also covers
# its sub-keys (``hydra`` covers ``hydra.run.dir`` and ``hydra/launcher``).
RESULT_NEUTRAL_KEYS = ("seed", "hydra", "output_dir", "trainer.resume", "trainer.progress", "trainer.plots",
                       "trainer.tensorboard", "trainer.checkpoint", "trainer.log_every")
TRAILING_COLUMNS = ("delta_m_%", "wall_time_s")


@dataclass
class Run:
    """One finished run: its directory, its overrides (without seed and output settings) and its summary."""

    run_dir: Path
    overrides: list[str]
    summary: dict
    label: str = ""


@dataclass
class TaskSetComparison:
    """The comparison of the runs of one task set: its columns and one row per configuration."""

    tasks: tuple[str, ...]
    runs: list[Run]
    columns: list[str]
    rows: list[dict]


def changes_result(override: str) -> bool:
    """Whether ``override`` (``key=value``, ``+key=value``, ``~key``) sets a key outside ``RESULT_NEUTRAL_KEYS``."""
    key = override.split("=", 1)[0].lstrip("+~")
    return not any(key == neutral or key.startswith((f"{neutral}.", f"{neutral}/")) for neutral in RESULT_NEUTRAL_KEYS)


def run_overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides that change its result (see ``RESULT_NEUTRAL_KEYS``)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return [o for o in overrides or [] if changes_result(o)]


def label_runs(runs: Sequence[Run]) -> None:
    """Label each run by the overrides that differ between runs (``default`` when none do)."""
    common = set.intersection(*(set(run.overrides) for run in runs)) if len(runs) > 1 else set()
    for run in runs:
        run.label = " ".join(o for o in run.overrides if o not in common) or "default"


def natural_key(path: Path) -> list[tuple[int, int, str]]:
    """Sort key of a path that orders numbered parts by number (``2`` before ``10``) and before named ones."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def find_runs(dirs: Sequence[Path]) -> tuple[list[Run], list[Path]]:
    """Every finished run under ``dirs`` and the job directories that have no ``summary.json`` (failed/unfinished)."""
    runs, unfinished = [], []
    for root in dirs:
        for config in sorted(Path(root).rglob(".hydra/config.yaml"), key=natural_key):
            run_dir = config.parent.parent
            summary_file = run_dir / "summary.json"
            if not summary_file.is_file():
                unfinished.append(run_dir)
                continue
            runs.append(Run(run_dir, run_overrides(run_dir), json.loads(summary_file.read_text())))
    label_runs(runs)
    return runs, unfinished


def no_runs_message(dirs: Sequence[Path], unfinished: Sequence[Path]) -> str:
    """Why there is nothing to report: no finished run under ``dirs``."""
    where = ", ".join(map(str, dirs))
    found = f"; {len(unfinished)} job(s) there have no summary.json (failed or unfinished)" if unfinished else ""
    return (f"no finished runs under {where}{found}: a run is a directory with .hydra/config.yaml and the "
            "summary.json that `mtl-train` writes when it finishes; give a run or sweep directory "
            "(outputs/<date>/<time> or multirun/<date>/<time>)")


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


def comparison_rows(runs: Sequence[Run], split: str = "test",
                    baselines: dict | None = None) -> tuple[list[str], list[dict]]:
    """Columns and one row per configuration: ``{"config", "seeds", column: (mean, std)}`` (std 0 for one seed).

    Δm (``delta_m_%``) is the mean over seeds of each run's Δm (against ``baselines`` when given)."""
    by_label: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(metric_values(run.summary, split, baselines))
    columns = sorted({c for values in by_label.values() for v in values for c in v if c not in TRAILING_COLUMNS})
    columns += [c for c in TRAILING_COLUMNS if any(c in v for values in by_label.values() for v in values)]
    rows = []
    for label, values in by_label.items():
        row = {"config": label, "seeds": len(values)}
        for column in columns:
            samples = [v[column] for v in values if column in v]
            if samples:
                row[column] = (statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0)
        rows.append(row)
    return columns, rows


def group_by_task_set(runs: Sequence[Run]) -> dict[tuple[str, ...], list[Run]]:
    """The runs of each task set (the summary's ``tasks``), in the order the task sets first appear."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.summary["tasks"]), []).append(run)
    return groups


def covers(baselines: dict, tasks: Sequence[str]) -> bool:
    return all(task in baselines["tasks"] for task in tasks)


def compare_task_sets(runs: Sequence[Run], baselines: dict | None = None) -> list[TaskSetComparison]:
    """One :class:`TaskSetComparison` per task set; Δm against ``baselines`` for the task sets they cover.

    Raises :class:`ConfigError` when ``baselines`` cover none of the task sets."""
    groups = group_by_task_set(runs)
    if baselines is not None and not any(covers(baselines, tasks) for tasks in groups):
        raise ConfigError(
            f"--baselines has single-task results for {sorted(baselines['tasks'])}, but the runs' task sets are "
            f"{' and '.join(str(list(tasks)) for tasks in groups)}; pass the baselines of the same task set "
            "(`mtl-train stl=true`)"
        )
    comparisons = []
    for tasks, group in groups.items():
        applied = baselines if baselines is not None and covers(baselines, tasks) else None
        columns, rows = comparison_rows(group, baselines=applied)
        comparisons.append(TaskSetComparison(tasks, group, columns, rows))
    return comparisons


def format_cell(cell: tuple[float, float] | None) -> str:
    return "" if cell is None else f"{cell[0]:.4f} ± {cell[1]:.4f}"


def task_set_title(tasks: Sequence[str]) -> str:
    return f"tasks {', '.join(tasks)}"


def comparison_csv(comparisons: Sequence[TaskSetComparison]) -> str:
    """``comparison.csv``: a mean and a std column per metric, one row per configuration of every task set (a
    metric a task set does not have is left empty)."""
    columns = list(dict.fromkeys(c for comparison in comparisons for c in comparison.columns))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["config", "seeds", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))])
    for row in (row for comparison in comparisons for row in comparison.rows):
        cells = [f"{v:.6g}" if c in row else "" for c in columns for v in row.get(c, (0.0, 0.0))]
        writer.writerow([row["config"], row["seeds"], *cells])
    return text.getvalue()


def markdown_table(columns: Sequence[str], rows: Sequence[dict]) -> list[str]:
    lines = ["| config | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    return lines + [f"| {row['config']} | {row['seeds']} | " + " | ".join(format_cell(row.get(c)) for c in columns)
                    + " |" for row in rows]


def comparison_markdown(comparisons: Sequence[TaskSetComparison]) -> str:
    """``comparison.md``: the table (mean ± std); one per task set, each under a heading, when there are several."""
    if len(comparisons) == 1:
        return "\n".join(markdown_table(comparisons[0].columns, comparisons[0].rows)) + "\n"
    sections = [f"## {task_set_title(c.tasks)}\n\n" + "\n".join(markdown_table(c.columns, c.rows)) + "\n"
                for c in comparisons]
    return "\n".join(sections)


def column_direction(summary: dict, column: str) -> str:
    """``↑`` when a higher value of ``column`` is better, ``↓`` when lower is, ``""`` when unknown."""
    if column in TRAILING_COLUMNS:
        return "↑" if column == "delta_m_%" else "↓"
    task, metric = column.split("/", 1)
    higher = summary.get("higher_is_better", {}).get(task, {}).get(metric)
    return "" if higher is None else "↑" if higher else "↓"


def comparison_table(comparison: TaskSetComparison) -> Table:
    """The terminal table of one task set: a block of rows per metric, one row per configuration, so that it stays
    narrow (it fits 80 columns) however many metrics and configurations there are."""
    table = Table(title=f"{task_set_title(comparison.tasks)}: {len(comparison.runs)} runs, test metrics",
                  box=box.SIMPLE_HEAD)
    table.add_column("metric", overflow="fold")
    table.add_column("config", overflow="fold")
    table.add_column("seeds", justify="right")
    table.add_column("mean ± std", justify="right", no_wrap=True)
    summary = comparison.runs[0].summary
    for column in comparison.columns:
        rows = [row for row in comparison.rows if column in row]
        for i, row in enumerate(rows):
            name = f"{column} {column_direction(summary, column)}".rstrip() if i == 0 else ""
            table.add_row(name, row["config"], str(row["seeds"]), format_cell(row[column]),
                          end_section=i == len(rows) - 1)
    return table


def output_files(comparisons: Sequence[TaskSetComparison]) -> dict[str, bytes]:
    """Every file of the report by name: ``comparison.csv``, ``comparison.md`` and each task set's plots (PNG +
    CSV; the file names carry the task names when there are several task sets). Single-task (``stl=true``) runs
    get a table row but no plot lines."""
    files = {"comparison.csv": comparison_csv(comparisons).encode(),
             "comparison.md": comparison_markdown(comparisons).encode()}
    for comparison in comparisons:
        suffix = "_" + "+".join(comparison.tasks) if len(comparisons) > 1 else ""
        files.update(plot_files(comparison_plots([run for run in comparison.runs if not run.summary.get("stl")]),
                                suffix))
    return files


def write_files(files: dict[str, bytes], out_dir: Path) -> None:
    for name, data in files.items():
        atomic_write(out_dir / name, lambda file, data=data: file.write(data))


def report(dirs: Sequence[Path], out_dir: Path, console: Console | None = None,
           baselines: Path | None = None) -> list[dict]:
    """Build, print and write the comparison of every run under ``dirs``; return its rows (of every task set).

    Δm is computed against ``baselines`` (see :func:`mtl_train.delta_m.load_baselines`) when given, else read from
    the runs' summaries. Raises :class:`UserError` when there is no finished run, before writing anything."""
    console = console or Console()
    runs, unfinished = find_runs(dirs)
    if not runs:
        raise UserError(no_runs_message(dirs, unfinished))
    comparisons = compare_task_sets(runs, load_baselines(baselines) if baselines is not None else None)
    files = output_files(comparisons)
    write_files(files, out_dir)
    for comparison in comparisons:
        console.print(comparison_table(comparison))
    for run_dir in unfinished:
        console.print(f"skipped (no summary.json: failed or unfinished): {run_dir}", highlight=False)
    plots = sum(name.endswith(".png") for name in files)
    console.print(f"wrote comparison.csv, comparison.md and {plots} plots (PNG + CSV) to {out_dir}", highlight=False)
    return [row for comparison in comparisons for row in comparison.rows]


def main(argv: Sequence[str] | None = None) -> None:
    """``mtl-train-report DIR... [--out OUT] [--baselines PATH]``."""
    parser = argparse.ArgumentParser(prog="mtl-train-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write comparison.csv/.md and the plots (default: the first DIR)")
    parser.add_argument("--baselines", type=Path, default=None,
                        help="a baselines.json or a directory of them (from `mtl-train stl=true`): adds a Δm column")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(1, f"error: not a directory: {', '.join(map(str, missing))}\n")
    try:
        report(args.dirs, args.out or args.dirs[0], baselines=args.baselines)
    except UserError as error:
        parser.exit(1, f"error: {error}\n")
