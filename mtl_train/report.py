"""Comparison tables across runs: one row per configuration, mean ± std over seeds of every per-task metric.

Runs are found as ``summary.json`` files (a run directory, or a sweep directory holding one per job). A run's
configuration is its Hydra overrides (``.hydra/overrides.yaml``) without the keys that do not change its result
(``seed=``, ``hydra.*``, ``trainer.resume``, ``trainer.progress``, ...), so the seeds of one configuration, resumed
jobs included, are averaged together. Runs of different task sets get a table (and plots) of their own. Failed or
unfinished jobs (no ``summary.json``) are listed and skipped.

Each task set of two or more tasks also gets its Pareto front: the configurations whose mean (over seeds) primary
test metrics no other configuration dominates, and the front's hypervolume (:mod:`mtl_train.pareto`). The reference
point of the hypervolume is given per task (``--hv-reference rhythm=0.9,denoise=25``, e.g. the single-task
baselines), or else it is each primary metric's worst configuration mean moved a further 10 % of the
configurations' range (best mean − worst mean) toward worse (of the worst mean's magnitude where all tie), so that
every configuration spans some volume; such a hypervolume compares the configurations of one table only. Single-task
(``stl=true``) rows are not on the front; a table needs two competing configurations for a front.

``mtl-train-report DIR...`` rebuilds the table, ``comparison.csv``, ``comparison.md``, the comparison plots
(:mod:`mtl_train.report_plots`) and, with ``--html``, ``report.html`` (:mod:`mtl_train.html_report`) from any run
or sweep directories, including partly failed sweeps; the sweep callback (:mod:`mtl_train.hydra_callbacks`) calls
the same code at the end of a sweep. Every output is computed before the first file is written, and each file is
written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from mtl_train.delta_m import delta_m, load_baselines, test_metrics
from mtl_train.errors import ConfigError, UserError
from mtl_train.html_report import HtmlImage, HtmlParagraph, HtmlSection, HtmlTable, html_page
from mtl_train.pareto import hypervolume, pareto_front
from mtl_train.report_plots import comparison_plots, plot_files
from mtl_train.utils.io import atomic_write

# Override keys that leave a run's result unchanged: where and how it was run, logged or shown. A key also covers
# its sub-keys (``hydra`` covers ``hydra.run.dir`` and ``hydra/launcher``).
RESULT_NEUTRAL_KEYS = ("seed", "hydra", "output_dir", "trainer.resume", "trainer.progress", "trainer.plots",
                       "trainer.tensorboard", "trainer.checkpoint", "trainer.log_every")
TRAILING_COLUMNS = ("delta_m_%", "conflict_fraction", "wall_time_s")
HV_REFERENCE_MARGIN = 0.1  # the default reference: the worst mean, 10 % of the range further toward worse
FRONT_MARK = "✓"


@dataclass
class Run:
    """One finished run: its directory, its overrides (without seed and output settings) and its summary."""

    run_dir: Path
    overrides: list[str]
    summary: dict
    label: str = ""


@dataclass
class ParetoFront:
    """The Pareto front of a task set's configurations over their mean primary test metrics (``columns``), and its
    hypervolume against ``reference`` (one value per column; ``reference_given``: set by the user)."""

    columns: list[str]
    higher_is_better: list[bool]
    configs: list[str]
    candidates: int
    reference: list[float]
    reference_given: bool
    hypervolume: float


@dataclass
class TaskSetComparison:
    """The comparison of the runs of one task set: its columns, one row per configuration (``"pareto"``: on the
    front, for the rows that compete) and its Pareto front (None with fewer than two tasks)."""

    tasks: tuple[str, ...]
    runs: list[Run]
    columns: list[str]
    rows: list[dict]
    pareto: ParetoFront | None = None


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
    conflict = summary.get("diagnostics", {}).get("gradients", {}).get("conflict_fraction")
    if conflict is not None and math.isfinite(conflict):
        values["conflict_fraction"] = conflict
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


def default_reference(means: list[list[float]], higher_is_better: Sequence[bool]) -> list[float]:
    """Per objective, the worst of ``means`` moved ``HV_REFERENCE_MARGIN`` of the range (best − worst) further
    toward worse; where all tie, that fraction of the worst value's magnitude (of 1 when it is 0), so that a metric
    on which no configuration differs scales every configuration's volume alike instead of zeroing it."""
    reference = []
    for values, higher in zip(zip(*means), higher_is_better):
        best, worst = (max(values), min(values)) if higher else (min(values), max(values))
        spread = abs(best - worst) or abs(worst) or 1.0
        reference.append(worst - HV_REFERENCE_MARGIN * spread if higher else worst + HV_REFERENCE_MARGIN * spread)
    return reference


def mark_pareto_front(group: Sequence[Run], rows: list[dict],
                      hv_reference: dict[str, float] | None) -> ParetoFront | None:
    """Mark each competing row (every primary test metric finite, not single-task) ``row["pareto"]`` True/False and
    return the front with its hypervolume against ``hv_reference`` (``{task: value}``) or the default reference.
    None with fewer than two tasks or two competing rows."""
    summary = group[0].summary
    primary = summary["primary_metric"]
    if len(primary) < 2:
        return None
    columns = [f"{task}/{metric}" for task, metric in primary.items()]
    higher = [bool(summary["higher_is_better"][task][metric]) for task, metric in primary.items()]
    single_task = {run.label for run in group if run.summary.get("stl")}
    candidates = [row for row in rows if row["config"] not in single_task
                  and all(column in row and math.isfinite(row[column][0]) for column in columns)]
    if len(candidates) < 2:
        return None
    means = [[row[column][0] for column in columns] for row in candidates]
    on_front = set(pareto_front(means, higher))
    for index, row in enumerate(candidates):
        row["pareto"] = index in on_front
    reference = ([hv_reference[task] for task in primary] if hv_reference is not None
                 else default_reference(means, higher))
    return ParetoFront(columns, higher, [row["config"] for row in candidates if row["pareto"]], len(candidates),
                       reference, hv_reference is not None, hypervolume(means, reference, higher))


def compare_task_sets(runs: Sequence[Run], baselines: dict | None = None,
                      hv_reference: dict[str, float] | None = None) -> list[TaskSetComparison]:
    """One :class:`TaskSetComparison` per task set; Δm against ``baselines`` for the task sets they cover, and the
    hypervolume against ``hv_reference`` (``{task: primary metric value}``) for those it covers.

    Raises :class:`ConfigError` when ``baselines`` or ``hv_reference`` cover none of the task sets."""
    groups = group_by_task_set(runs)
    if baselines is not None and not any(covers(baselines, tasks) for tasks in groups):
        raise ConfigError(
            f"--baselines has single-task results for {sorted(baselines['tasks'])}, but the runs' task sets are "
            f"{' and '.join(str(list(tasks)) for tasks in groups)}; pass the baselines of the same task set "
            "(`mtl-train stl=true`)"
        )
    if hv_reference is not None and not any(set(tasks) <= set(hv_reference) for tasks in groups):
        raise ConfigError(
            f"--hv-reference gives {sorted(hv_reference)}, but the runs' task sets are "
            f"{' and '.join(str(list(tasks)) for tasks in groups)}; give a value of each task's primary test metric "
            "(--hv-reference task=value,task=value)"
        )
    comparisons = []
    for tasks, group in groups.items():
        applied = baselines if baselines is not None and covers(baselines, tasks) else None
        columns, rows = comparison_rows(group, baselines=applied)
        reference = hv_reference if hv_reference is not None and set(tasks) <= set(hv_reference) else None
        comparisons.append(TaskSetComparison(tasks, group, columns, rows, mark_pareto_front(group, rows, reference)))
    return comparisons


def format_cell(cell: tuple[float, float] | None) -> str:
    return "" if cell is None else f"{cell[0]:.4f} ± {cell[1]:.4f}"


def task_set_title(tasks: Sequence[str]) -> str:
    return f"tasks {', '.join(tasks)}"


def comparison_csv(comparisons: Sequence[TaskSetComparison]) -> str:
    """``comparison.csv``: a mean and a std column per metric, one row per configuration of every task set (a
    metric a task set does not have is left empty), and ``pareto``: ``true`` on the front, ``false`` off it, empty
    for rows that do not compete (single-task runs, task sets of one task)."""
    columns = list(dict.fromkeys(c for comparison in comparisons for c in comparison.columns))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["config", "seeds", "pareto", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))])
    for row in (row for comparison in comparisons for row in comparison.rows):
        cells = [f"{v:.6g}" if c in row else "" for c in columns for v in row.get(c, (0.0, 0.0))]
        pareto = "" if "pareto" not in row else "true" if row["pareto"] else "false"
        writer.writerow([row["config"], row["seeds"], pareto, *cells])
    return text.getvalue()


def table_cells(comparison: TaskSetComparison) -> tuple[list[str], list[list[str]]]:
    """The header and cells of a task set's table: config, seeds, ``front`` (``✓`` on the Pareto front; only when
    there is a front) and mean ± std of each column."""
    front = comparison.pareto is not None
    header = ["config", "seeds", *(["front"] if front else []), *comparison.columns]
    rows = [[row["config"], str(row["seeds"]), *([FRONT_MARK if row.get("pareto") else ""] if front else []),
             *(format_cell(row.get(c)) for c in comparison.columns)] for row in comparison.rows]
    return header, rows


def pareto_lines(comparison: TaskSetComparison) -> list[str]:
    """The sentences that state a task set's Pareto front: its metrics, size, hypervolume and reference point."""
    front = comparison.pareto
    if front is None:
        return []
    summary = comparison.runs[0].summary
    metrics = ", ".join(f"{c} {column_direction(summary, c)}" for c in front.columns)
    reference = ", ".join(f"{c} = {value:.4f}" for c, value in zip(front.columns, front.reference))
    source = ("given by --hv-reference" if front.reference_given else
              f"each metric's worst configuration mean, moved {HV_REFERENCE_MARGIN:.0%} of the configurations' "
              "range further toward worse; of its magnitude where all tie")
    return [f"Pareto front ({FRONT_MARK}) over the primary test metrics ({metrics}; mean over seeds): "
            f"{len(front.configs)} of {front.candidates} configurations.",
            f"Hypervolume of the front: {front.hypervolume:.4g}, reference point {reference} ({source})."]


def front_cells(comparison: TaskSetComparison) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the table of the front's configurations and their mean primary test metrics."""
    front = comparison.pareto
    summary = comparison.runs[0].summary
    header = ["config", *(f"{c} {column_direction(summary, c)}" for c in front.columns)]
    rows = [[row["config"], *(f"{row[c][0]:.4f}" for c in front.columns)]
            for row in comparison.rows if row.get("pareto")]
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def task_set_markdown(comparison: TaskSetComparison) -> str:
    """A task set's table, the Pareto front's sentences and, with more than two tasks, the table of the front."""
    lines = markdown_table(*table_cells(comparison))
    if comparison.pareto is not None:
        lines += ["", *pareto_lines(comparison)]
        if len(comparison.pareto.columns) > 2:
            lines += ["", *markdown_table(*front_cells(comparison))]
    return "\n".join(lines) + "\n"


def comparison_markdown(comparisons: Sequence[TaskSetComparison]) -> str:
    """``comparison.md``: the table (mean ± std) and its Pareto front; one per task set, each under a heading, when
    there are several."""
    if len(comparisons) == 1:
        return task_set_markdown(comparisons[0])
    return "\n".join(f"## {task_set_title(c.tasks)}\n\n" + task_set_markdown(c) for c in comparisons)


def column_direction(summary: dict, column: str) -> str:
    """``↑`` when a higher value of ``column`` is better, ``↓`` when lower is, ``""`` when unknown."""
    if column in TRAILING_COLUMNS:
        return {"delta_m_%": "↑", "wall_time_s": "↓"}.get(column, "")
    task, metric = column.split("/", 1)
    higher = summary.get("higher_is_better", {}).get(task, {}).get(metric)
    return "" if higher is None else "↑" if higher else "↓"


def comparison_table(comparison: TaskSetComparison) -> Table:
    """The terminal table of one task set: a block of rows per metric, one row per configuration (``✓`` after the
    configurations on the Pareto front), so that it stays narrow (it fits 80 columns) however many metrics and
    configurations there are."""
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
            config = f"{row['config']} {FRONT_MARK}" if row.get("pareto") else row["config"]
            table.add_row(name, config, str(row["seeds"]), format_cell(row[column]),
                          end_section=i == len(rows) - 1)
    return table


def affinity_groups(runs: Sequence[Run]) -> str:
    """The task groupings that the runs' inter-task affinity suggests, each with the number of runs suggesting it
    (``"rhythm+denoise | waves (2 runs)"``), one per line; empty when no run measured affinity."""
    groupings: dict[str, int] = {}
    for run in runs:
        groups = run.summary.get("diagnostics", {}).get("affinity", {}).get("groups")
        if groups:
            name = " | ".join("+".join(group) for group in groups)
            groupings[name] = groupings.get(name, 0) + 1
    return "\n".join(f"{name} ({count} run{'s' if count > 1 else ''})" for name, count in groupings.items())


def diagnostics_cells(comparison: TaskSetComparison) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the gradient diagnostics of each configuration with any: the runs that have them,
    the mean conflict fraction and gradient norm of each task (mean over those runs) and the affinity groups."""
    header = ["config", "runs", "conflict fraction", *(f"‖g‖ {task}" for task in comparison.tasks), "affinity groups"]
    rows = []
    for label in dict.fromkeys(run.label for run in comparison.runs):
        runs = [run for run in comparison.runs if run.label == label and "gradients" in
                run.summary.get("diagnostics", {})]
        if not runs:
            continue
        gradients = [run.summary["diagnostics"]["gradients"] for run in runs]
        conflict = [g["conflict_fraction"] for g in gradients if g.get("conflict_fraction") is not None]
        norms = [[g["mean_norm"][i] for g in gradients if g["mean_norm"][i] is not None]
                 for i in range(len(comparison.tasks))]
        rows.append([label, str(len(runs)), f"{statistics.fmean(conflict):.3f}" if conflict else "",
                     *(f"{statistics.fmean(n):.4g}" if n else "" for n in norms), affinity_groups(runs)])
    return header, rows


PLOT_CAPTIONS = {
    "weights_comparison": "Task weights per configuration (mean over seeds ± 1 std)",
    "losses_comparison": "Training losses per configuration (mean over seeds ± 1 std)",
    "metric_curves": "Primary validation metric of each task",
    "tradeoff": "Trade-off of the first two tasks' primary test metrics",
    "pareto_parallel": "Primary test metrics of every configuration (front highlighted)",
    "gradient_cosines_comparison": "Mean cosine between the task gradients (mean over seeds)",
}


def html_sections(comparisons: Sequence[TaskSetComparison], files: dict[str, bytes],
                  unfinished: Sequence[Path]) -> list[HtmlSection]:
    """The report's sections: per task set its table, Pareto front, gradient diagnostics and plots; then the runs
    that were skipped."""
    sections = []
    for comparison in comparisons:
        suffix = plot_suffix(comparison, comparisons)
        blocks: list = [HtmlTable("Test metrics (mean ± std over seeds)", *table_cells(comparison))]
        blocks += [HtmlParagraph(line) for line in pareto_lines(comparison)]
        if comparison.pareto is not None and len(comparison.pareto.columns) > 2:
            blocks.append(HtmlTable("Configurations on the Pareto front", *front_cells(comparison)))
        header, rows = diagnostics_cells(comparison)
        if rows:
            blocks.append(HtmlTable("Gradient diagnostics", header, rows))
        blocks += [HtmlImage(caption, files[f"{stem}{suffix}.png"]) for stem, caption in PLOT_CAPTIONS.items()
                   if f"{stem}{suffix}.png" in files]
        sections.append(HtmlSection(f"{task_set_title(comparison.tasks)}: {len(comparison.runs)} runs", blocks))
    if unfinished:
        sections.append(HtmlSection("Skipped jobs (no summary.json: failed or unfinished)",
                                    [HtmlParagraph(str(run_dir)) for run_dir in unfinished]))
    return sections


def plot_suffix(comparison: TaskSetComparison, comparisons: Sequence[TaskSetComparison]) -> str:
    """The end of a task set's plot file names: ``_<task>+<task>...`` when there are several task sets."""
    return "_" + "+".join(comparison.tasks) if len(comparisons) > 1 else ""


def output_files(comparisons: Sequence[TaskSetComparison], html_for: Sequence[Path] = (),
                 unfinished: Sequence[Path] = ()) -> dict[str, bytes]:
    """Every file of the report by name: ``comparison.csv``, ``comparison.md``, each task set's plots (PNG +
    CSV; the file names carry the task names when there are several task sets) and, when ``html_for`` names the
    reported directories, ``report.html``. Single-task (``stl=true``) runs get a table row but no plot lines."""
    files = {"comparison.csv": comparison_csv(comparisons).encode(),
             "comparison.md": comparison_markdown(comparisons).encode()}
    for comparison in comparisons:
        front = comparison.pareto.configs if comparison.pareto is not None else []
        runs = [run for run in comparison.runs if not run.summary.get("stl")]
        files.update(plot_files(comparison_plots(runs, front), plot_suffix(comparison, comparisons)))
    if html_for:
        details = [f"runs from {', '.join(map(str, html_for))}",
                   f"written {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
                   "task sets: " + "; ".join(", ".join(c.tasks) for c in comparisons)]
        files["report.html"] = html_page("mtl-train report", details,
                                         html_sections(comparisons, files, unfinished)).encode()
    return files


def write_files(files: dict[str, bytes], out_dir: Path) -> None:
    for name, data in files.items():
        atomic_write(out_dir / name, lambda file, data=data: file.write(data))


def report(dirs: Sequence[Path], out_dir: Path, console: Console | None = None, baselines: Path | None = None,
           hv_reference: dict[str, float] | None = None, html: bool = False) -> list[dict]:
    """Build, print and write the comparison of every run under ``dirs``; return its rows (of every task set).

    Δm is computed against ``baselines`` (see :func:`mtl_train.delta_m.load_baselines`) when given, else read from
    the runs' summaries; the hypervolume against ``hv_reference`` (``{task: value}``) when given, else against the
    default reference (see the module docstring). ``html``: also write ``report.html``. Raises :class:`UserError`
    when there is no finished run, before writing anything."""
    console = console or Console()
    runs, unfinished = find_runs(dirs)
    if not runs:
        raise UserError(no_runs_message(dirs, unfinished))
    comparisons = compare_task_sets(runs, load_baselines(baselines) if baselines is not None else None, hv_reference)
    files = output_files(comparisons, dirs if html else (), unfinished)
    write_files(files, out_dir)
    for comparison in comparisons:
        console.print(comparison_table(comparison))
        for line in pareto_lines(comparison):
            console.print(line, highlight=False)
    for run_dir in unfinished:
        console.print(f"skipped (no summary.json: failed or unfinished): {run_dir}", highlight=False)
    plots = sum(name.endswith(".png") for name in files)
    html_note = " and report.html" if html else ""
    console.print(f"wrote comparison.csv, comparison.md, {plots} plots (PNG + CSV){html_note} to {out_dir}",
                  highlight=False)
    return [row for comparison in comparisons for row in comparison.rows]


def parse_hv_reference(text: str) -> dict[str, float]:
    """``{task: value}`` from ``task=value,task=value``; :class:`ConfigError` naming the bad part otherwise."""
    reference = {}
    for part in text.split(","):
        task, _, value = part.partition("=")
        try:
            reference[task.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--hv-reference: {part.strip()!r} is not task=value; give the reference value of "
                              "each task's primary test metric, e.g. --hv-reference rhythm=0.9,denoise=25") from None
        if not task.strip():
            raise ConfigError(f"--hv-reference: {part.strip()!r} names no task; e.g. rhythm=0.9,denoise=25")
    return reference


def main(argv: Sequence[str] | None = None) -> None:
    """``mtl-train-report DIR... [--out OUT] [--baselines PATH] [--hv-reference TASK=VALUE,...] [--html]``."""
    parser = argparse.ArgumentParser(prog="mtl-train-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write comparison.csv/.md and the plots (default: the first DIR)")
    parser.add_argument("--baselines", type=Path, default=None,
                        help="a baselines.json or a directory of them (from `mtl-train stl=true`): adds a Δm column")
    parser.add_argument("--hv-reference", default=None, metavar="TASK=VALUE,...",
                        help="the hypervolume's reference point: a value of each task's primary test metric "
                             "(default: each metric's worst configuration mean, 10%% of the range further toward "
                             "worse)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: tables, Pareto front, plots and diagnostics in one file")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(1, f"error: not a directory: {', '.join(map(str, missing))}\n")
    try:
        hv_reference = parse_hv_reference(args.hv_reference) if args.hv_reference is not None else None
        report(args.dirs, args.out or args.dirs[0], baselines=args.baselines, hv_reference=hv_reference,
               html=args.html)
    except UserError as error:
        parser.exit(1, f"error: {error}\n")
