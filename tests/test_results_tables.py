"""scripts/results_tables.py on hand-made sweeps: every cell checked against numbers computed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results_tables.py"
spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
results_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_tables)

TASKS = ["left", "right"]
HIGHER = {task: {"accuracy": True, "loss": False} for task in TASKS}
PRIMARY = {task: "accuracy" for task in TASKS}


def write_run(run_dir: Path, overrides: list[str], summary: dict) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / "summary.json").write_text(json.dumps(summary))


def mtl_summary(left: float, right: float, delta: float, epoch_times: list[float], selected: bool) -> dict:
    test = {"left": {"accuracy": left, "loss": 1.0}, "right": {"accuracy": right, "loss": 1.0}}
    final = {"left": {"accuracy": 0.0, "loss": 9.0}, "right": {"accuracy": 0.0, "loss": 9.0}}
    summary = {"tasks": TASKS, "weighting": "EqualWeighting", "primary_metric": PRIMARY, "higher_is_better": HIGHER,
               "final": {"val": final, "test": test if not selected else final}, "epoch_time_s": epoch_times,
               "wall_time_s": 1.0, "delta_m": {"value": delta}}
    if selected:  # the validation-selected model is the one reported
        summary["selected"] = {"test": test}
    return summary


def test_rows_are_means_and_stds_over_seeds_with_the_single_task_row_first(tmp_path: Path) -> None:
    sweep, stl = tmp_path / "sweep", tmp_path / "stl"
    write_run(sweep / "0", ["weighting=ew", "seed=0"], mtl_summary(0.70, 0.80, -2.0, [2.0, 4.0], selected=True))
    write_run(sweep / "1", ["weighting=ew", "seed=1"], mtl_summary(0.74, 0.84, -4.0, [4.0, 6.0], selected=True))
    write_run(sweep / "2", ["weighting=pcgrad", "seed=0"], mtl_summary(0.90, 0.60, 1.5, [8.0], selected=False))
    for seed, (left, right) in enumerate([(0.80, 0.90), (0.82, 0.86)]):
        run = stl / str(seed)
        summary = {"tasks": TASKS, "weighting": "EqualWeighting", "stl": True, "primary_metric": PRIMARY,
                   "higher_is_better": HIGHER, "wall_time_s": 1.0,
                   "final": {"test": {"left": {"accuracy": left}, "right": {"accuracy": right}}}}
        write_run(run, ["stl=true", f"seed={seed}"], summary)
        for task, seconds in (("left", [1.0, 3.0]), ("right", [5.0])):
            (run / "stl" / task).mkdir(parents=True)
            (run / "stl" / task / "summary.json").write_text(json.dumps({"epoch_time_s": seconds}))

    lines = results_tables.results_table(sweep, stl).splitlines()

    assert lines[0] == "| method | seeds | left accuracy ↑ | right accuracy ↑ | Δm % ↑ | s / epoch |"
    # stds are sample stds: two values a, b give |a - b| / sqrt(2)
    assert lines[2] == "| single-task | 2 | 0.8100 ± 0.0141 | 0.8800 ± 0.0283 | 0 | 7 |"  # 2 + 5 s per epoch
    assert lines[3] == "| ew | 2 | 0.7200 ± 0.0283 | 0.8200 ± 0.0283 | -3.00 ± 1.41 | 4 |"  # mean of 3 and 5 s
    assert lines[4] == "| pcgrad | 1 | 0.9000 ± 0.0000 | 0.6000 ± 0.0000 | 1.50 ± 0.00 | 8 |"
    assert len(lines) == 5
