"""2-step smoke trainings of every weighting x task set on CPU: every output file written, every number finite."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config, image_data_overrides

from mtl_train.errors import ConfigError
from mtl_train.train import train

WEIGHTINGS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
# Methods defined only for tasks with class-logit outputs / [0, 1] validation metrics, and the task sets that
# have a value task (reconstruction, regression): there the run must stop with a ConfigError naming the key.
CLASSIFICATION_ONLY = {"max_entropy": "weighting=max_entropy needs class-logit outputs",
                       "performance": "weighting.metrics"}
WITH_VALUE_TASKS = {"ecg_cls_rec", "ecg_full", "cls_rec"}
OUTPUT_FILES = ["metrics.jsonl", "losses.csv", "weights.csv", "summary.json", "checkpoints/last.pt",
                "weights.png", "losses.png"]


def smoke_config(task: str, weighting: str, output_dir: Path, data_root: Path, extra: list[str] = ()):
    overrides = ["debug=smoke", f"task={task}", f"weighting={weighting}", *extra]
    dataset = compose_config(overrides).dataset._target_
    if dataset.endswith("multi_digit.MultiDigit"):
        overrides += image_data_overrides(data_root, "multi_fashion")
    elif "mnist" in dataset.lower():
        overrides += image_data_overrides(data_root)
    return compose_config(overrides, output_dir)


def read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))


def all_finite(tree) -> bool:
    if isinstance(tree, dict):
        return all(all_finite(v) for v in tree.values())
    return math.isfinite(tree)


# The default suite trains every method on the four-task ECG set and every task set with EW, PCGrad and MGDA, plus
# the classification-only methods everywhere; the rest of the method x task-set matrix runs with `pytest -m slow`.
MATRIX_TASK = "ecg_full"
ON_EVERY_TASK_SET = {"ew", "pcgrad", "mgda", *CLASSIFICATION_ONLY}
SMOKE_CASES = [pytest.param(weighting, task, marks=() if task == MATRIX_TASK or weighting in ON_EVERY_TASK_SET
                            else pytest.mark.slow)
               for weighting in WEIGHTINGS for task in TASKS]


@pytest.mark.parametrize("weighting,task", SMOKE_CASES)
def test_smoke_train_writes_every_output(task: str, weighting: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    cfg = smoke_config(task, weighting, tmp_path, tiny_fashion_root)
    if weighting in CLASSIFICATION_ONLY and task in WITH_VALUE_TASKS:
        with pytest.raises(ConfigError, match=CLASSIFICATION_ONLY[weighting]):
            train(cfg)
        return
    summary = train(cfg)
    task_names = list(cfg.task)
    for name in OUTPUT_FILES:
        assert (tmp_path / name).is_file(), name

    for name in ("losses.csv", "weights.csv"):
        rows = read_csv_rows(tmp_path / name)
        assert rows[0] == ["step", *task_names]
        assert [r[0] for r in rows[1:]] == ["1", "2"]
        assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:])

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(1, "val"), (2, "val"), (2, "test")]
    assert all(set(r["metrics"]) == set(task_names) and all_finite(r["metrics"]) for r in records)

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["final"] == summary["final"] and all_finite(on_disk["final"])
    assert on_disk["steps"] == 2 and on_disk["device"] == "cpu" and len(on_disk["config_digest"]) == 12
    assert set(on_disk["best"]) == set(task_names)

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["loop"]["step"] == 2 and checkpoint["config"]["weighting"]["_target_"] == cfg.weighting._target_
    assert {"model", "optimizer", "scheduler", "scaler", "weighting", "rng"} <= set(checkpoint)


def test_weights_csv_records_what_the_method_applied(tmp_path: Path, tiny_fashion_root: Path) -> None:
    cfg = smoke_config("ecg_cls_rec", "static", tmp_path, tiny_fashion_root,
                       ["weighting.weights={rhythm:1.0,denoise:0.1}"])
    train(cfg)
    rows = read_csv_rows(tmp_path / "weights.csv")
    assert [[float(v) for v in r[1:]] for r in rows[1:]] == [[1.0, 0.1], [1.0, 0.1]]


def test_gradnorm_weights_sum_to_task_count_every_step(tmp_path: Path, tiny_fashion_root: Path) -> None:
    cfg = smoke_config("ecg_full", "gradnorm", tmp_path, tiny_fashion_root, ["trainer.max_steps=6"])
    train(cfg)
    rows = read_csv_rows(tmp_path / "weights.csv")[1:]
    assert len(rows) == 6
    assert rows[0][1:] == ["1", "1", "1", "1"]  # w(0) = 1, weights used at step 1
    for row in rows:
        weights = [float(v) for v in row[1:]]
        assert sum(weights) == pytest.approx(4.0, rel=1e-4) and min(weights) > 0
    assert any(float(v) != 1.0 for v in rows[-1][1:])  # they moved


def test_same_seed_same_run(tmp_path: Path, tiny_fashion_root: Path) -> None:
    first = train(smoke_config("ecg_cls_rec", "uw", tmp_path / "a", tiny_fashion_root))
    second = train(smoke_config("ecg_cls_rec", "uw", tmp_path / "b", tiny_fashion_root))
    assert first["final"] == second["final"]
    assert (tmp_path / "a" / "losses.csv").read_text() == (tmp_path / "b" / "losses.csv").read_text()


def test_channels_last_reaches_the_model_and_leaves_the_run_unchanged(tmp_path: Path,
                                                                       tiny_fashion_root: Path) -> None:
    """``trainer.channels_last=true`` stores the 2-D kernels in NHWC (seen in the checkpoint, which keeps strides) and
    gives the same losses as the default layout."""
    train(smoke_config("cls_seg", "ew", tmp_path / "plain", tiny_fashion_root))
    train(smoke_config("cls_seg", "ew", tmp_path / "nhwc", tiny_fashion_root, ["trainer.channels_last=true"]))
    state = torch.load(tmp_path / "nhwc" / "checkpoints" / "last.pt", weights_only=False)["model"]
    kernels = [tensor for tensor in state.values() if tensor.dim() == 4]
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
    unambiguous = [k for k in kernels if k.shape[1] > 1 and k.shape[2] * k.shape[3] > 1]  # NCHW != NHWC there
    assert unambiguous and not any(k.is_contiguous() for k in unambiguous)
    plain, nhwc = (read_csv_rows(tmp_path / run / "losses.csv") for run in ("plain", "nhwc"))
    assert len(plain) == len(nhwc) > 1
    for row_plain, row_nhwc in zip(plain[1:], nhwc[1:]):
        assert [float(v) for v in row_nhwc] == pytest.approx([float(v) for v in row_plain], rel=1e-4)
