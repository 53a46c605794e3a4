"""The training loop: evaluation schedule, best-metric tracking, non-finite losses, precision and device checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from mtl_train.data.synthetic_ecg import SyntheticECG
from mtl_train.engine.device import resolve_amp, resolve_device
from mtl_train.errors import ConfigError, NonFiniteLossError
from mtl_train.train import train


def ecg_smoke(tmp_path: Path, *extra: str):
    return compose_config(["debug=smoke", "dataset.num_val=16", *extra], tmp_path)


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_epoch_mode_evaluates_at_every_epoch_end(tmp_path: Path) -> None:
    # 32 training segments, batch 8 -> 4 steps per epoch; 3 epochs -> 12 steps, val after steps 4, 8, 12
    summary = train(ecg_smoke(tmp_path, "trainer.max_steps=null", "trainer.max_epochs=3", "trainer.eval_every=null"))
    assert [(r["step"], r["epoch"], r["split"]) for r in records(tmp_path)] == [
        (4, 1, "val"), (8, 2, "val"), (12, 3, "val"), (12, 3, "test")]
    assert summary["steps"] == 12 and summary["epochs"] == 3 and len(summary["epoch_time_s"]) == 3


def test_best_metrics_are_the_best_of_the_val_records(tmp_path: Path) -> None:
    summary = train(ecg_smoke(tmp_path, "trainer.max_steps=5"))
    val = [r for r in records(tmp_path) if r["split"] == "val"]
    accuracies = [r["metrics"]["rhythm"]["accuracy"] for r in val]
    mses = [r["metrics"]["denoise"]["mse"] for r in val]
    assert summary["best"]["rhythm"]["accuracy"]["value"] == max(accuracies)
    assert summary["best"]["denoise"]["mse"]["value"] == min(mses)
    assert summary["best"]["denoise"]["mse"]["step"] == val[mses.index(min(mses))]["step"]


def test_non_finite_loss_stops_with_the_task_and_step_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_build = SyntheticECG.build

    def build_with_nan_targets(self):
        data = original_build(self)
        data.train.targets["clean"][:] = float("nan")
        return data

    monkeypatch.setattr(SyntheticECG, "build", build_with_nan_targets)
    with pytest.raises(NonFiniteLossError, match="the loss of task 'denoise' is not finite at step 1"):
        train(ecg_smoke(tmp_path))
    assert (tmp_path / "losses.csv").read_text().splitlines()[1].startswith("1,")  # the row is kept on disk


def test_bf16_autocast_on_cpu_trains(tmp_path: Path) -> None:
    summary = train(ecg_smoke(tmp_path, "trainer.amp=bf16"))
    assert summary["amp"] == "bf16" and summary["final"]["val"]["rhythm"]["loss"] > 0


def test_grad_clip_and_exponential_scheduler(tmp_path: Path) -> None:
    cfg = ecg_smoke(tmp_path, "trainer.grad_clip=0.5", "scheduler=exponential", "trainer.max_steps=null",
                    "trainer.max_epochs=2", "optimizer.lr=0.01")
    train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.95**2)


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="trainer.amp=fp16 needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="trainer.amp must be one of"):
        resolve_amp("fp8", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="trainer.device=cuda but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(("key", "value"), [("batch_size", 0), ("max_steps", -1), ("grad_clip", 0), ("eval_every", 0)])
def test_bad_trainer_values_are_config_errors(tmp_path: Path, key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"trainer.{key}"):
        train(ecg_smoke(tmp_path, f"trainer.{key}={value}"))


def test_non_positive_learning_rate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optimizer.lr"):
        train(ecg_smoke(tmp_path, "optimizer.lr=-0.1"))


def test_task_target_missing_from_dataset_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task.cls.target='label' is not provided by this dataset"):
        train(ecg_smoke(tmp_path, "task=cls_seg", "dataset=synthetic_ecg", "backbone=cnn1d"))


def test_best_val_model_selection_reports_the_test_metrics_of_the_best_mean_val_evaluation(tmp_path: Path) -> None:
    summary = train(ecg_smoke(tmp_path, "trainer.max_steps=4", "trainer.model_selection=best_val"))
    val = [r for r in records(tmp_path) if r["split"] == "val"]
    scores = [(r["metrics"]["rhythm"]["accuracy"] + r["metrics"]["denoise"]["psnr"]) / 2 for r in val]
    best = val[scores.index(max(scores))]  # the first evaluation reaching the best mean
    assert summary["selected"]["step"] == best["step"] and summary["selected"]["val"] == best["metrics"]
    assert summary["selected"]["score"] == pytest.approx(max(scores))
    assert set(summary["selected"]["test"]) == {"rhythm", "denoise"}


def test_best_val_selection_refuses_metrics_of_mixed_direction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainer.model_selection=best_val averages .*heart_rate:mae"):
        train(ecg_smoke(tmp_path, "task=ecg_full", "trainer.model_selection=best_val"))
