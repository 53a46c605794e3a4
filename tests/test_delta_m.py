"""Δm against single-task baselines, checked on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_train.delta_m import delta_m, load_baselines, relative_change
from mtl_train.errors import ConfigError


def summary(accuracy: float, mse: float) -> dict:
    return {
        "tasks": ["cls", "rec"],
        "final": {"test": {"cls": {"accuracy": accuracy, "loss": 0.3}, "rec": {"mse": mse, "psnr": 20.0}}},
        "primary_metric": {"cls": "accuracy", "rec": "mse"},
        "higher_is_better": {"cls": {"accuracy": True, "loss": False}, "rec": {"mse": False, "psnr": True}},
    }


def baselines(accuracy: float, mse: float) -> dict:
    return {"tasks": {"cls": {"accuracy": accuracy}, "rec": {"mse": mse}}, "files": []}


def test_relative_change_is_signed_so_that_improvement_is_positive() -> None:
    assert relative_change(0.9, 0.8, higher_is_better=True) == pytest.approx(12.5)
    assert relative_change(0.09, 0.1, higher_is_better=False) == pytest.approx(10.0)
    assert relative_change(0.12, 0.1, higher_is_better=False) == pytest.approx(-20.0)
    assert relative_change(0.5, 0.0, higher_is_better=True) is None


def test_delta_m_is_the_mean_signed_relative_change_of_the_primary_metrics() -> None:
    # cls: (0.9 - 0.8) / 0.8 = +12.5 %; rec (lower is better): -(0.12 - 0.1) / 0.1 = -20 %; mean -3.75 %
    result = delta_m(summary(accuracy=0.9, mse=0.12), baselines(accuracy=0.8, mse=0.1))
    assert result["value"] == pytest.approx(-3.75)
    assert result["per_task"] == pytest.approx({"cls": 12.5, "rec": -20.0})
    assert result["metrics"] == {"cls": "accuracy", "rec": "mse"}


def test_delta_m_of_the_baselines_themselves_is_zero() -> None:
    assert delta_m(summary(0.8, 0.1), baselines(0.8, 0.1))["value"] == 0.0


def test_delta_m_skips_a_zero_baseline_and_names_missing_tasks() -> None:
    result = delta_m(summary(0.9, 0.12), baselines(accuracy=0.0, mse=0.1))
    assert result["per_task"]["cls"] is None and result["value"] == pytest.approx(-20.0)
    with pytest.raises(ConfigError, match=r"no single-task result for task\(s\) \['rec'\]"):
        delta_m(summary(0.9, 0.1), {"tasks": {"cls": {"accuracy": 0.8}}, "files": []})


def test_load_baselines_averages_every_file_under_a_directory(tmp_path: Path) -> None:
    for seed, accuracy in ((0, 0.8), (1, 0.9)):
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "baselines.json").write_text(json.dumps({"tasks": {"cls": {"accuracy": accuracy}}}))
    loaded = load_baselines(tmp_path)
    assert loaded["tasks"]["cls"]["accuracy"] == pytest.approx(0.85)
    assert len(loaded["files"]) == 2
    assert load_baselines(tmp_path / "0" / "baselines.json")["tasks"]["cls"]["accuracy"] == 0.8


def test_load_baselines_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mtl-train stl=true"):
        load_baselines(tmp_path)
    (tmp_path / "baselines.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        load_baselines(tmp_path)


def test_delta_m_uses_the_validation_selected_model_when_there_is_one() -> None:
    run = {**summary(accuracy=0.5, mse=0.5), "selected": {"test": {"cls": {"accuracy": 0.9}, "rec": {"mse": 0.1}}}}
    assert delta_m(run, baselines(accuracy=0.8, mse=0.1))["value"] == pytest.approx(6.25)  # (12.5 + 0) / 2
