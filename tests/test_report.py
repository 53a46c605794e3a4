"""Sweeps: a real 2x2 multirun in a subprocess, its summary.jsonl and comparison table, and mtl-train-report; the
report's grouping, failures and terminal layout on hand-made runs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mtl_train import report_plots
from mtl_train.report import default_reference, find_runs, main, report

BIN = Path(sys.executable).parent


def mtl_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mtl-train"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = mtl_train("-m", "debug=smoke", "dataset.num_val=16", "trainer.max_steps=3", "weighting=ew,uw",
                       "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir)
    assert result.returncode == 0, result.stderr
    return sweep_dir


def job_summaries(sweep_dir: Path) -> dict[str, list[dict]]:
    by_weighting: dict[str, list[dict]] = {}
    for job in sweep_dir.glob("[0-9]*"):
        summary = json.loads((job / "summary.json").read_text())
        by_weighting.setdefault(summary["weighting"], []).append(summary)
    return by_weighting


def test_summary_jsonl_has_one_line_per_job(sweep: Path) -> None:
    records = [json.loads(line) for line in (sweep / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["job"] for r in records) == [0, 1, 2, 3]
    assert all(r["status"] == "COMPLETED" and r["summary"]["steps"] == 3 for r in records)
    assert {tuple(sorted(r["overrides"])) for r in records} >= {
        ("dataset.num_val=16", "debug=smoke", "seed=0", "trainer.max_steps=3", "weighting=ew")}


def test_comparison_csv_is_mean_and_std_of_the_jobs(sweep: Path) -> None:
    with open(sweep / "comparison.csv", newline="") as file:
        rows = {row["config"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"weighting=ew", "weighting=uw"}
    for name, summaries in job_summaries(sweep).items():
        row = rows["weighting=ew" if name == "EqualWeighting" else "weighting=uw"]
        assert row["seeds"] == "2"
        for key in ("rhythm/accuracy", "denoise/psnr", "denoise/mse"):
            task, metric = key.split("/")
            values = [s["final"]["test"][task][metric] for s in summaries]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-5)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-4, abs=1e-9)
    assert "| weighting=ew | 2 |" in (sweep / "comparison.md").read_text()


def test_report_rebuilds_a_partly_failed_sweep(tmp_path: Path) -> None:
    result = mtl_train("-m", "debug=smoke", "dataset.num_val=16", "trainer.batch_size=8,0",
                       f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0  # Hydra re-raises after the sweep when a job failed
    records = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in records) == ["COMPLETED", "FAILED"]
    assert "trainer.batch_size must be >= 1" in next(r["error"] for r in records if r["status"] == "FAILED")
    report = subprocess.run([str(BIN / "mtl-train-report"), str(tmp_path), "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert report.returncode == 0, report.stderr
    assert "skipped (no summary.json" in report.stdout and str(tmp_path / "1") in report.stdout
    with open(tmp_path / "report" / "comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and rows[0]["seeds"] == "1"
    assert rows[0]["config"] == "debug=smoke dataset.num_val=16 trainer.batch_size=8"  # one run: all its overrides


def test_report_rejects_a_missing_directory(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "mtl-train-report"), str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 1 and "not a directory" in result.stderr


def test_sweep_writes_comparison_plots_with_their_data(sweep: Path) -> None:
    for stem in ("weights_comparison", "losses_comparison", "metric_curves", "tradeoff"):
        assert (sweep / f"{stem}.png").stat().st_size > 0
    with open(sweep / "weights_comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    # one panel per configuration (mean over its seeds): 2 configs x 3 steps x 2 tasks
    assert len(rows) == 12 and {r["config"] for r in rows} == {"weighting=ew", "weighting=uw"}
    assert {float(r["task_weight_mean"]) for r in rows if r["config"] == "weighting=ew"} == {1.0}
    assert {r["seeds"] for r in rows} == {"2"}
    with open(sweep / "tradeoff.csv", newline="") as file:
        points = list(csv.DictReader(file))
    assert len(points) == 4 and sorted(p["seed"] for p in points) == ["0", "0", "1", "1"]
    assert (sweep / "report.html").read_text().count('src="data:image/png;base64,') == 4  # the plots, embedded


def test_joblib_launcher_sweep_is_summarised(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = mtl_train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke", "dataset.num_val=16",
                       "weighting=ew,uw", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "summary.jsonl").read_text().splitlines()) == 2
    assert "| weighting=uw | 1 |" in (tmp_path / "comparison.md").read_text()


def test_report_with_baselines_adds_the_mean_delta_m_of_each_configuration(sweep: Path, tmp_path: Path) -> None:
    stl = mtl_train("stl=true", "debug=smoke", "dataset.num_val=16", "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'stl'}",
                    cwd=tmp_path)
    assert stl.returncode == 0, stl.stderr
    base = json.loads((tmp_path / "stl" / "baselines.json").read_text())["tasks"]
    result = subprocess.run([str(BIN / "mtl-train-report"), str(sweep), str(tmp_path / "stl"), "--out", str(tmp_path),
                             "--baselines", str(tmp_path / "stl")], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "comparison.csv", newline="") as file:
        rows = {row["config"]: row for row in csv.DictReader(file)}
    assert rows["stl=true"]["delta_m_%_mean"] == ""  # the baselines row has no Δm of its own
    for name, summaries in job_summaries(sweep).items():
        row = rows[f"weighting={'ew' if name == 'EqualWeighting' else 'uw'}"]
        per_run = [50 * ((s["final"]["test"]["rhythm"]["accuracy"] - base["rhythm"]["accuracy"]) / base["rhythm"]["accuracy"]
                         + (s["final"]["test"]["denoise"]["psnr"] - base["denoise"]["psnr"]) / base["denoise"]["psnr"])
                   for s in summaries]
        assert float(row["delta_m_%_mean"]) == pytest.approx(statistics.fmean(per_run), rel=1e-5)


HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "mae": False, "rmse": False, "miou": True,
                    "pixel_accuracy": True, "psnr": True, "mse": False}
ECG = {"rhythm": ("accuracy", "macro_f1"), "denoise": ("psnr", "mse")}  # the primary metric first
ECG_FULL = {"rhythm": ("accuracy", "macro_f1"), "heart_rate": ("mae", "rmse"), "waves": ("miou", "pixel_accuracy"),
            "denoise": ("psnr", "mse")}


def write_run(run_dir: Path, overrides: list[str], tasks: dict[str, tuple[str, ...]], value: float,
              seed: int = 0) -> None:
    """A finished 3-step run as `mtl-train` leaves it, in which every val and test metric equals ``value``, every
    task weight is 1 and every training loss is ``value``."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = {task: {metric: value for metric in names} for task, names in tasks.items()}
    summary = {"tasks": list(tasks), "weighting": "EqualWeighting", "final": {"val": metrics, "test": metrics},
               "higher_is_better": {task: {m: HIGHER_IS_BETTER[m] for m in names} for task, names in tasks.items()},
               "primary_metric": {task: names[0] for task, names in tasks.items()}, "wall_time_s": 1.0, "seed": seed}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for name, step_value in (("weights", 1.0), ("losses", value)):
        rows = [",".join(["step", *tasks])]
        rows += [",".join([str(step), *[str(step_value)] * len(tasks)]) for step in (1, 2, 3)]
        (run_dir / f"{name}.csv").write_text("\n".join(rows) + "\n")
    records = [{"step": step, "epoch": 0, "split": "val", "metrics": metrics} for step in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def quiet_console(width: int = 200) -> Console:
    return Console(width=width, record=True, file=io.StringIO())


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as file:
        return {row["config"]: row for row in csv.DictReader(file)}


def test_numbered_and_named_run_directories_sort_together(tmp_path: Path) -> None:
    for name in ("10", "baseline", "2", "0"):
        write_run(tmp_path / name, [f"seed={name}"] if name.isdigit() else ["weighting=static"], ECG, 0.5)
    runs, unfinished = find_runs([tmp_path])
    assert [run.run_dir.name for run in runs] == ["0", "2", "10", "baseline"] and unfinished == []


def test_a_job_resumed_in_place_is_pooled_with_its_seeds(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["weighting=ew", "seed=0"], ECG, 0.5, seed=0)
    write_run(tmp_path / "1", ["weighting=ew", "seed=1", "trainer.resume=true", "trainer.progress=plain"], ECG, 0.7,
              seed=1)
    write_run(tmp_path / "2", ["weighting=uw", "seed=0"], ECG, 0.9, seed=0)
    rows = {row["config"]: row for row in report([tmp_path], tmp_path, quiet_console())}
    assert set(rows) == {"weighting=ew", "weighting=uw"}
    assert rows["weighting=ew"]["seeds"] == 2
    # mean of 0.5 and 0.7, sample std |0.5 - 0.7| / sqrt(2)
    assert rows["weighting=ew"]["rhythm/accuracy"] == pytest.approx((0.6, 0.2 / math.sqrt(2)))


def test_a_directory_without_runs_is_an_error_and_gets_no_files(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: no finished runs under {tmp_path}") and "summary.json" in error
    assert error.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_a_sweep_whose_jobs_all_failed_is_an_error_that_counts_them(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "config.yaml").write_text("{}\n")
    with pytest.raises(SystemExit, match="1"):
        main([str(tmp_path), "--out", str(tmp_path / "report")])
    assert "1 job(s) there have no summary.json (failed or unfinished)" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_runs_of_different_task_sets_get_a_table_each(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["task=ecg_full", "weighting=ew"], ECG_FULL, 0.3)
    write_run(tmp_path / "1", ["weighting=ew"], ECG, 0.5)
    write_run(tmp_path / "2", ["weighting=uw"], ECG, 0.7)
    console = quiet_console()
    report([tmp_path], tmp_path / "out", console)
    rows = read_csv(tmp_path / "out" / "comparison.csv")
    assert rows["weighting=uw"]["rhythm/accuracy_mean"] == "0.7" and rows["weighting=uw"]["heart_rate/mae_mean"] == ""
    assert rows["task=ecg_full weighting=ew"]["heart_rate/mae_mean"] == "0.3"
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert (markdown.index("## tasks rhythm, heart_rate, waves, denoise\n")
            < markdown.index("| task=ecg_full weighting=ew | 1 |") < markdown.index("## tasks rhythm, denoise\n")
            < markdown.index("| weighting=uw | 1 |"))
    for tasks in ("rhythm+denoise", "rhythm+heart_rate+waves+denoise"):
        for stem in ("weights_comparison", "losses_comparison", "metric_curves", "tradeoff"):
            assert (tmp_path / "out" / f"{stem}_{tasks}.png").stat().st_size > 0
    text = console.export_text()
    assert "tasks rhythm, denoise: 2 runs" in text and "tasks rhythm, heart_rate, waves, denoise: 1 runs" in text


def test_baselines_give_delta_m_to_the_task_set_they_cover(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "0", ["weighting=ew"], ECG, 0.5)
    write_run(tmp_path / "runs" / "1", ["task=ecg_full"], ECG_FULL, 0.5)
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"tasks": {"rhythm": {"accuracy": 0.4}, "denoise": {"psnr": 0.4}}}))
    report([tmp_path / "runs"], tmp_path, quiet_console(), baselines=baselines)
    rows = read_csv(tmp_path / "comparison.csv")
    assert float(rows["weighting=ew"]["delta_m_%_mean"]) == pytest.approx(25.0)  # both +0.1 / 0.4, higher is better
    assert rows["task=ecg_full"]["delta_m_%_mean"] == ""


def test_baselines_of_another_task_set_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "runs" / "0", ["weighting=ew"], ECG, 0.5)
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"tasks": {"left": {"accuracy": 0.4}}}))
    with pytest.raises(SystemExit, match="1"):
        main([str(tmp_path / "runs"), "--baselines", str(baselines)])
    assert "--baselines has single-task results for ['left']" in capsys.readouterr().err


def test_a_failing_plot_leaves_no_file_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(tmp_path / "runs" / "0", ["weighting=ew"], ECG, 0.5)

    def broken_tradeoff(*args: object) -> None:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_plots, "tradeoff", broken_tradeoff)
    with pytest.raises(RuntimeError, match="plotting failed"):
        report([tmp_path / "runs"], tmp_path / "out", quiet_console())
    assert not (tmp_path / "out").exists()


def test_the_sweep_table_of_three_methods_fits_80_columns(tmp_path: Path) -> None:
    for job, (method, seed) in enumerate((m, s) for m in ("ew", "uw", "gradnorm") for s in (0, 1)):
        write_run(tmp_path / str(job), [f"weighting={method}", f"seed={seed}"], ECG_FULL, 0.25 * (seed + 1), seed)
    console = quiet_console(width=80)
    report([tmp_path], tmp_path, console)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    lines = lines[:next(i for i, line in enumerate(lines) if line.startswith("Pareto front"))]  # the table
    for task, metrics in ECG_FULL.items():
        for metric in metrics:
            name = f"{task}/{metric} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}"
            assert sum(name in line for line in lines) == 1
    # seeds 0 and 1 give every metric 0.25 and 0.5: mean 0.375, sample std 0.25 / sqrt(2)
    assert sum("weighting=gradnorm" in line and "0.3750 ± 0.1768" in line for line in lines) == 8
    assert sum("weighting=gradnorm" in line and "1.0000 ± 0.0000" in line for line in lines) == 1  # wall time


def test_the_loss_plot_data_are_the_mean_and_std_over_seeds(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["seed=0"], ECG, 0.25, seed=0)
    write_run(tmp_path / "1", ["seed=1"], ECG, 0.5, seed=1)
    report([tmp_path], tmp_path, quiet_console())
    with open(tmp_path / "losses_comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6  # 3 steps x 2 tasks of the one configuration
    for row in rows:
        assert (float(row["training_loss_mean"]), float(row["training_loss_std"]), row["seeds"]) == (
            0.375, pytest.approx(0.25 / math.sqrt(2)), "2")


def set_test_metric(run_dir: Path, values: dict[str, float]) -> None:
    """Set every test metric of each task in ``values`` to its value in the run's summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for task, value in values.items():
        summary["final"]["test"][task] = {metric: value for metric in summary["final"]["test"][task]}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def write_two_task_sweep(root: Path) -> None:
    """EW (two seeds: accuracy 0.8 and 1.0, PSNR 20), UW (0.7, 25) and GradNorm (0.6, 22: dominated by UW)."""
    for job, (method, seed, accuracy, psnr) in enumerate((("ew", 0, 0.8, 20.0), ("ew", 1, 1.0, 20.0),
                                                          ("uw", 0, 0.7, 25.0), ("gradnorm", 0, 0.6, 22.0))):
        write_run(root / str(job), [f"weighting={method}", f"seed={seed}"], ECG, 0.5, seed)
        set_test_metric(root / str(job), {"rhythm": accuracy, "denoise": psnr})


def test_the_pareto_front_and_its_hypervolume_against_the_default_reference(tmp_path: Path) -> None:
    write_two_task_sweep(tmp_path)
    rows = {row["config"]: row for row in report([tmp_path], tmp_path, quiet_console())}
    assert {name: row["pareto"] for name, row in rows.items()} == {
        "weighting=ew": True, "weighting=uw": True, "weighting=gradnorm": False}
    assert {name: row["pareto"] for name, row in read_csv(tmp_path / "comparison.csv").items()} == {
        "weighting=ew": "true", "weighting=uw": "true", "weighting=gradnorm": "false"}
    markdown = (tmp_path / "comparison.md").read_text()
    assert "| config | seeds | front | denoise/mse |" in markdown
    assert "| weighting=ew | 2 | ✓ |" in markdown and "| weighting=gradnorm | 1 |  |" in markdown
    assert "rhythm/accuracy ↑, denoise/psnr ↑; mean over seeds): 2 of 3 configurations." in markdown
    # reference: worst mean less 10 % of the range: 0.6 - 0.03, 20 - 0.5; volume of the means (0.9, 20), (0.7, 25):
    # (0.9 - 0.57) x (20 - 19.5) + (0.7 - 0.57) x (25 - 20)
    assert ("Hypervolume of the front: 0.815, reference point rhythm/accuracy = 0.5700, denoise/psnr = 19.5000 "
            "(each metric's worst configuration mean") in markdown


def test_a_given_hypervolume_reference_replaces_the_default(tmp_path: Path) -> None:
    write_two_task_sweep(tmp_path / "runs")
    main([str(tmp_path / "runs"), "--out", str(tmp_path), "--hv-reference", "rhythm=0.5,denoise=20"])
    # EW's box is flat (PSNR 20 = the reference); UW's (0.7 - 0.5) x (25 - 20) covers GradNorm's
    assert ("Hypervolume of the front: 1, reference point rhythm/accuracy = 0.5000, denoise/psnr = 20.0000 "
            "(given by --hv-reference)") in (tmp_path / "comparison.md").read_text()


@pytest.mark.parametrize(("reference", "message"), [
    ("rhythm=0.5,denoise", "--hv-reference: 'denoise' is not task=value"),
    ("rhythm=0.5,waves=1", "--hv-reference gives ['rhythm', 'waves'], but the runs' task sets are"),
])
def test_a_bad_hypervolume_reference_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture, reference: str,
                                                  message: str) -> None:
    write_two_task_sweep(tmp_path / "runs")
    with pytest.raises(SystemExit, match="1"):
        main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--hv-reference", reference])
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_more_than_two_tasks_get_a_table_of_the_front_and_parallel_coordinates(tmp_path: Path) -> None:
    # heart_rate's MAE is lower-is-better: EW is better there, UW on the other three tasks, GradNorm on none
    for job, (method, mae, other) in enumerate((("ew", 3.0, 0.5), ("uw", 5.0, 0.7), ("gradnorm", 6.0, 0.6))):
        write_run(tmp_path / str(job), [f"weighting={method}"], ECG_FULL, 0.5)
        set_test_metric(tmp_path / str(job), {"rhythm": other, "heart_rate": mae, "waves": other, "denoise": other})
    report([tmp_path], tmp_path, quiet_console())
    markdown = (tmp_path / "comparison.md").read_text()
    assert ("| config | rhythm/accuracy ↑ | heart_rate/mae ↓ | waves/miou ↑ | denoise/psnr ↑ |\n|---|---|---|---|---|\n"
            "| weighting=ew | 0.5000 | 3.0000 | 0.5000 | 0.5000 |\n"
            "| weighting=uw | 0.7000 | 5.0000 | 0.7000 | 0.7000 |\n") in markdown
    with open(tmp_path / "pareto_parallel.csv", newline="") as file:
        rows = {(row["config"], row["metric"]): row for row in csv.DictReader(file)}
    # each axis from the worst configuration (0) to the best (1): MAE 6 -> 0, 3 -> 1
    assert [float(rows[(f"weighting={m}", "heart_rate/mae")]["scaled"]) for m in ("ew", "uw", "gradnorm")] == [
        1.0, pytest.approx(1 / 3), 0.0]
    assert rows[("weighting=gradnorm", "rhythm/accuracy")]["pareto"] == "False"


def add_gradient_diagnostics(run_dir: Path, cosine: float | None, conflict: float,
                             groups: list[list[str]] | None = None) -> None:
    """Give a two-task run the ``diagnostics`` that ``mtl-train diagnostics=...`` writes in its summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["diagnostics"] = {"gradients": {"wrt": "rep", "every": 25, "samples": 4,
                                            "mean_cosine": [[1.0, cosine], [cosine, 1.0]], "mean_norm": [2.0, 4.0],
                                            "conflict_fraction": conflict}}
    if groups is not None:
        summary["diagnostics"]["affinity"] = {"every": 50, "samples": 2, "mean": [[None, 0.1], [0.2, None]],
                                              "groups": groups}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_gradient_diagnostics_give_a_conflict_column_and_cosine_heatmaps(tmp_path: Path) -> None:
    write_two_task_sweep(tmp_path)
    add_gradient_diagnostics(tmp_path / "0", -0.5, 1.0, [["rhythm"], ["denoise"]])
    add_gradient_diagnostics(tmp_path / "1", None, 0.5, [["rhythm"], ["denoise"]])  # a cosine never measured
    add_gradient_diagnostics(tmp_path / "2", 0.25, 0.0)
    report([tmp_path], tmp_path, quiet_console())
    rows = read_csv(tmp_path / "comparison.csv")
    assert [rows[f"weighting={m}"]["conflict_fraction_mean"] for m in ("ew", "uw", "gradnorm")] == ["0.75", "0", ""]
    with open(tmp_path / "gradient_cosines_comparison.csv", newline="") as file:
        cells = {(r["config"], r["task_a"], r["task_b"]): (float(r["mean_cosine"]), r["runs"])
                 for r in csv.DictReader(file)}
    assert cells[("weighting=ew", "rhythm", "denoise")] == (-0.5, "2")  # the null of seed 1 is left out
    assert cells[("weighting=uw", "denoise", "rhythm")] == (0.25, "1")
    assert ("weighting=gradnorm", "rhythm", "rhythm") not in cells  # no panel without diagnostics


def test_the_default_reference_of_a_tied_metric_is_a_tenth_of_its_magnitude_worse() -> None:
    # accuracy ties at 0.5 (0.05 below), MAE spans 3..5 (0.2 above the worst), a metric tied at 0 (0.1 below)
    reference = default_reference([[0.5, 3.0, 0.0], [0.5, 5.0, 0.0]], [True, False, True])
    assert reference == pytest.approx([0.45, 5.2, -0.1])
