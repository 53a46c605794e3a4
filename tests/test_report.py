"""Sweeps: a real 2x2 multirun in a subprocess, its summary.jsonl and comparison table, and mtl-train-report."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

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
    # one panel per configuration (its first seed): 2 configs x 3 steps x 2 tasks
    assert len(rows) == 12 and {r["config"] for r in rows} == {"weighting=ew", "weighting=uw"}
    assert {float(r["task_weight"]) for r in rows if r["config"] == "weighting=ew"} == {1.0}
    with open(sweep / "tradeoff.csv", newline="") as file:
        points = list(csv.DictReader(file))
    assert len(points) == 4 and sorted(p["seed"] for p in points) == ["0", "0", "1", "1"]


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
