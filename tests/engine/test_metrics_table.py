"""The end-of-run metrics table (mtl_train/engine/report.py) on an 80-column terminal."""

from __future__ import annotations

import io

from rich.console import Console

from mtl_train.engine.report import metrics_table

# the four ECG tasks with their metrics and whether higher is better
ECG_FULL = {"rhythm": {"accuracy": True, "macro_f1": True, "loss": False},
            "heart_rate": {"mae": False, "rmse": False, "loss": False},
            "waves": {"miou": True, "pixel_accuracy": True, "loss": False},
            "denoise": {"mse": False, "psnr": True, "loss": False}}


def ecg_full_summary(value: float) -> dict:
    """A run's summary in which every final val and test metric is ``value`` and every best val is ``value / 2``,
    reached at step 128."""
    metrics = {task: {metric: value for metric in higher} for task, higher in ECG_FULL.items()}
    best = {task: {metric: {"value": value / 2, "step": 128} for metric in higher} for task, higher in ECG_FULL.items()}
    return {"weighting": "GradNorm", "steps": 128, "wall_time_s": 41.1, "device": "cpu", "higher_is_better": ECG_FULL,
            "final": {"val": metrics, "test": metrics}, "best": best,
            "delta_m": {"value": -11.5, "per_task": {"rhythm": 1.25, "heart_rate": -30.0, "waves": None,
                                                     "denoise": -4.5}}}


def rendered_lines(summary: dict) -> list[str]:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(metrics_table(summary))
    return console.export_text().splitlines()


def test_the_ecg_full_table_fits_80_columns_with_every_name_whole() -> None:
    lines = rendered_lines(ecg_full_summary(1234.5678))  # values as wide as a heart-rate loss early in training
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    for task, higher in ECG_FULL.items():
        assert sum(line.split()[:1] == [task] for line in lines) == 1
        for metric, up in higher.items():
            assert any(f"{metric} {'↑' if up else '↓'}" in line for line in lines)


def test_each_metric_is_one_row_of_final_val_final_test_best_val_and_its_step() -> None:
    lines = rendered_lines(ecg_full_summary(0.25))
    assert next(line for line in lines if "pixel_accuracy" in line).split() == ["pixel_accuracy", "↑", "0.2500",
                                                                                "0.2500", "0.1250", "128"]
    assert next(line for line in lines if "heart_rate" in line).split() == ["heart_rate", "mae", "↓", "0.2500",
                                                                            "0.2500", "0.1250", "128"]
    caption = " ".join(line.strip() for line in lines[lines.index(next(ln for ln in lines if "Δm" in ln)):])
    assert caption == ("Δm vs single-task baselines: -11.50% (rhythm +1.25%, heart_rate -30.00%, waves n/a, "
                       "denoise -4.50%)")
