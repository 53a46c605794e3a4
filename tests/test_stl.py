"""Single-task baselines (``stl=true``) and Δm in the summaries of runs given ``baselines=``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import compose_config

from mtl_train.errors import ConfigError
from mtl_train.train import train


@pytest.fixture(scope="module")
def stl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("stl")
    # static weights of the wrong length for one task and an alternating schedule: both replaced by EW / joint
    cfg = compose_config(["debug=smoke", "stl=true", "weighting=static", "schedule=alternating"], output_dir)
    return output_dir, train(cfg)


def test_stl_trains_one_single_task_model_per_task_with_the_same_budget(stl_run: tuple[Path, dict]) -> None:
    output_dir, summary = stl_run
    assert summary["stl"] is True and summary["tasks"] == ["rhythm", "denoise"]
    for task in ("rhythm", "denoise"):
        run = json.loads((output_dir / "stl" / task / "summary.json").read_text())
        assert run["tasks"] == [task] and run["weighting"] == "EqualWeighting"
        assert run["steps"] == summary["steps"] == 2
        with open(output_dir / "stl" / task / "losses.csv", newline="") as file:
            assert next(csv.reader(file)) == ["step", task]
        assert summary["final"]["test"][task] == run["final"]["test"][task]


def test_stl_writes_the_baselines_file(stl_run: tuple[Path, dict]) -> None:
    output_dir, summary = stl_run
    baselines = json.loads((output_dir / "baselines.json").read_text())
    assert baselines["tasks"] == summary["final"]["test"]
    assert json.loads((output_dir / "summary.json").read_text())["final"] == summary["final"]


def test_a_run_with_baselines_reports_delta_m(stl_run: tuple[Path, dict], tmp_path: Path) -> None:
    stl_dir, stl_summary = stl_run
    summary = train(compose_config(["debug=smoke", f"baselines={stl_dir}"], tmp_path))
    test, base = summary["final"]["test"], stl_summary["final"]["test"]
    rhythm = 100 * (test["rhythm"]["accuracy"] - base["rhythm"]["accuracy"]) / base["rhythm"]["accuracy"]
    denoise = 100 * (test["denoise"]["psnr"] - base["denoise"]["psnr"]) / base["denoise"]["psnr"]  # psnr: higher is better
    assert summary["delta_m"]["per_task"] == pytest.approx({"rhythm": rhythm, "denoise": denoise})
    assert summary["delta_m"]["value"] == pytest.approx((rhythm + denoise) / 2)
    assert summary["delta_m"]["baselines"] == [str(stl_dir / "baselines.json")]
    assert json.loads((tmp_path / "summary.json").read_text())["delta_m"] == summary["delta_m"]


def test_baselines_missing_a_task_stop_before_training(stl_run: tuple[Path, dict], tmp_path: Path) -> None:
    stl_dir, _ = stl_run
    with pytest.raises(ConfigError, match=r"no single-task result for task\(s\) \['heart_rate', 'waves'\]"):
        train(compose_config(["debug=smoke", "task=ecg_full", f"baselines={stl_dir}"], tmp_path))
    assert not (tmp_path / "losses.csv").exists()


def test_best_val_baselines_record_the_selected_models_val_metrics(tmp_path: Path) -> None:
    """With trainer.model_selection=best_val, baselines.json holds each selected model's val metrics next to its
    test metrics, so tuning can take Δm on val against them."""
    summary = train(compose_config(["debug=smoke", "stl=true", "trainer.model_selection=best_val"], tmp_path))
    baselines = json.loads((tmp_path / "baselines.json").read_text())
    for task in ("rhythm", "denoise"):
        run = json.loads((tmp_path / "stl" / task / "summary.json").read_text())
        assert baselines["val"][task] == run["selected"]["val"][task] == summary["selected"]["val"][task]
        assert baselines["tasks"][task] == run["selected"]["test"][task]
