"""The training loop: evaluation schedule, epochs cut by max_steps, best-metric tracking and model selection,
FAMO's extra forward, non-finite losses, precision and device checks."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from torch import Tensor

from mtl_train.data.synthetic_ecg import SyntheticECG
from mtl_train.engine.device import resolve_amp, resolve_device
from mtl_train.engine.trainer import Trainer, selection_score
from mtl_train.errors import ConfigError, NonFiniteLossError
from mtl_train.train import train
from mtl_train.weighting.dwa import DynamicWeightAverage
from mtl_train.weighting.famo import FAMO


def ecg_smoke(tmp_path: Path, *extra: str):
    return compose_config(["debug=smoke", "dataset.num_val=16", *extra], tmp_path)


# 512-sample segments and a narrow CNN (still BatchNorm in every block): ~20 ms per training run of a few steps
SMALL = ["dataset.duration_s=4.0", "dataset.sample_rate=128", "backbone.channels=[8,8,8,8]", "trainer.plots=false"]


def built_trainer(overrides: list[str], output_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Trainer:
    """The Trainer ``train`` builds for ``overrides`` (ECG smoke data), without fitting it: for driving
    ``train_step`` by hand."""
    built: list[Trainer] = []

    def keep(self: Trainer) -> dict:
        built.append(self)
        return {}

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "fit", keep)
        train(ecg_smoke(output_dir, *SMALL, *overrides))
    return built[0]


def train_batch(trainer: Trainer, index: int, size: int = 8) -> tuple[Tensor, dict[str, Tensor]]:
    """Rows ``index * size`` onwards of the training split, as ``train_step`` takes them."""
    split = trainer.splits["train"]
    rows = slice(index * size, (index + 1) * size)
    return split.inputs[rows], {name: target[rows] for name, target in split.targets.items()}


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

    def build_with_overflowing_targets(self):  # (NaN targets would stop earlier, at the label check)
        data = original_build(self)
        data.train.targets["clean"][:] = 3e38  # the squared error overflows float32: an infinite loss
        return data

    monkeypatch.setattr(SyntheticECG, "build", build_with_overflowing_targets)
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


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_max_steps_mid_epoch_counts_no_epoch_and_a_longer_resume_finishes_it_as_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 36 training segments, batch 8 -> 5 steps per epoch; step 7 is the 2nd batch of epoch 2, step 14 the 4th of 3
    run = [*SMALL, "dataset.num_train=36", "trainer.max_epochs=3", "trainer.eval_every=null", "trainer.log_every=1",
           "weighting=dwa"]  # DWA's weights in epoch 3 come from the mean losses of epochs 1 and 2
    closed: list[int] = []
    original = DynamicWeightAverage.after_epoch

    def record(self, epoch: int, mean_losses: Tensor) -> None:
        closed.append(epoch)
        original(self, epoch, mean_losses)

    monkeypatch.setattr(DynamicWeightAverage, "after_epoch", record)
    reference = train(ecg_smoke(tmp_path / "reference", *run, "trainer.max_steps=14"))
    assert closed == [1, 2] and reference["epochs"] == 2
    closed.clear()
    first = train(ecg_smoke(tmp_path / "run", *run, "trainer.max_steps=7"))
    assert closed == [1] and first["epochs"] == 1 and len(first["epoch_time_s"]) == 1  # epoch 2 is not over
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["loop"]["batch_in_epoch"] == 2 and checkpoint["loop"]["epoch_steps"] == 2
    closed.clear()
    resumed = train(ecg_smoke(tmp_path / "run", *run, "trainer.max_steps=14", "trainer.resume=true"))
    assert closed == [2] and resumed["epochs"] == 2 and resumed["steps"] == 14
    for name in ("losses.csv", "weights.csv"):
        assert read_rows(tmp_path / "run" / name) == read_rows(tmp_path / "reference" / name)


def test_selection_score_is_the_mean_signed_relative_change_against_the_reference() -> None:
    # +1 accuracy point (0.80 -> 0.81, +1.25 %) does not make up for -1 dB PSNR (30 -> 29, -3.33 %)
    assert selection_score({"cls": 0.81, "rec": 29.0}, {"cls": 0.80, "rec": 30.0}, {"cls": True, "rec": True}) == (
        pytest.approx((0.01 / 0.80 - 1.0 / 30.0) / 2))
    # mixed directions: accuracy 0.8 -> 0.9 (+12.5 %), MAE 5 -> 4 bpm (lower is better: +20 %)
    assert selection_score({"cls": 0.9, "hr": 4.0}, {"cls": 0.8, "hr": 5.0}, {"cls": True, "hr": False}) == (
        pytest.approx((0.125 + 0.2) / 2))
    assert selection_score({"cls": 0.25}, {"cls": 0.0}, {"cls": True}) == pytest.approx(0.25 / 1e-8)  # |ref| = 0


# (rhythm accuracy, denoise PSNR in dB) at the validations after steps 1-4, against step 1's (0.80, 30.0):
# step 2 -1.04 % (+1.25 % accuracy, -3.33 % PSNR), step 3 +5.75 %, step 4 +3.62 %. The mean of the raw values
# (accuracy + dB) / 2 would pick step 4, whose PSNR is highest.
SCRIPTED_VAL = {1: (0.80, 30.0), 2: (0.81, 29.0), 3: (0.90, 29.7), 4: (0.85, 30.3)}


def test_best_val_selects_by_relative_change_and_saves_the_selected_weights_as_best_pt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights_at: dict[int, dict[str, Tensor]] = {}
    original = Trainer.evaluate

    def scripted(self: Trainer, split_name: str) -> dict:
        if split_name != "val":
            return original(self, split_name)
        weights_at[self.step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        accuracy, psnr = SCRIPTED_VAL[self.step]
        return {"rhythm": {"accuracy": accuracy, "macro_f1": accuracy, "loss": 1.0},
                "denoise": {"mse": 0.01, "psnr": psnr, "loss": 0.01}}

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    summary = train(ecg_smoke(tmp_path, *SMALL, "trainer.max_steps=4", "trainer.eval_every=1",
                              "trainer.model_selection=best_val"))
    assert summary["selected"]["step"] == 3 and summary["selected"]["val"]["rhythm"]["accuracy"] == 0.90
    assert summary["selected"]["score"] == pytest.approx((0.10 / 0.80 - 0.3 / 30.0) / 2)
    assert set(summary["selected"]["test"]) == {"rhythm", "denoise"}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == 3 and best["model"].keys() == weights_at[3].keys()
    assert all(torch.equal(best["model"][k], weights_at[3][k]) for k in best["model"])
    assert not all(torch.equal(weights_at[3][k], weights_at[4][k]) for k in best["model"])  # training moved on
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert last["loop"]["selection_reference"] == {"rhythm": 0.80, "denoise": 30.0}  # resumes keep the reference


def test_a_run_resumed_into_another_directory_starts_with_the_best_pt_selected_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = {1: 0.80, 2: 0.90, 3: 0.50}  # rhythm accuracy; step 2 is selected, step 3 (after the resume) is worse
    original = Trainer.evaluate

    def evaluate(self: Trainer, split_name: str) -> dict:
        if split_name != "val":
            return original(self, split_name)
        return {"rhythm": {"accuracy": scripted[self.step], "macro_f1": 0.5, "loss": 1.0},
                "denoise": {"mse": 0.01, "psnr": 30.0, "loss": 0.01}}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run = [*SMALL, "trainer.eval_every=1", "trainer.model_selection=best_val"]
    train(ecg_smoke(tmp_path / "first", *run, "trainer.max_steps=2"))
    summary = train(ecg_smoke(tmp_path / "second", *run, "trainer.max_steps=3", f"trainer.resume={tmp_path / 'first'}"))
    assert summary["selected"]["step"] == 2
    first, second = (torch.load(tmp_path / run_dir / "checkpoints" / "best.pt", weights_only=False)
                     for run_dir in ("first", "second"))
    assert second["step"] == 2 and all(torch.equal(second["model"][k], first["model"][k]) for k in first["model"])


def test_best_val_selection_takes_metrics_of_mixed_direction(tmp_path: Path) -> None:
    summary = train(ecg_smoke(tmp_path, *SMALL, "task=ecg_full", "trainer.max_steps=4",
                              "trainer.model_selection=best_val"))
    val = [r for r in records(tmp_path) if r["split"] == "val"]
    primary = {"rhythm": "accuracy", "heart_rate": "mae", "waves": "miou", "denoise": "psnr"}
    higher = {"rhythm": True, "heart_rate": False, "waves": True, "denoise": True}
    values = [{task: r["metrics"][task][metric] for task, metric in primary.items()} for r in val]
    scores = [selection_score(v, values[0], higher) for v in values]
    assert summary["selected"]["step"] == val[scores.index(max(scores))]["step"]
    assert summary["selected"]["score"] == pytest.approx(max(scores))
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_famos_extra_forward_moves_batchnorm_once_and_replays_the_dropout_masks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ECG CNN has BatchNorm in every block; the rhythm head gets dropout 0.5
    trainer = built_trainer(["weighting=famo", "task.rhythm.head.dropout=0.5"], tmp_path, monkeypatch)
    assert [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]
    inputs, targets = train_batch(trainer, 0)
    ordinary = copy.deepcopy(trainer.model).train()
    with torch.no_grad():
        ordinary(inputs)  # one training forward: BatchNorm's running statistics move once
    seen: dict[str, Tensor] = {}
    original_backward, original_after = FAMO.backward, FAMO.after_optimizer_step

    def backward(self, losses: Tensor, ctx) -> Tensor:
        seen["training"], seen["replayed"] = losses.detach().clone(), ctx.recompute_losses()  # before the update
        return original_backward(self, losses, ctx)

    def after_optimizer_step(self, ctx) -> None:
        rng = torch.get_rng_state()
        seen["after"], seen["again"] = ctx.recompute_losses(), ctx.recompute_losses()
        seen["rng_kept"] = torch.equal(rng, torch.get_rng_state())
        original_after(self, ctx)

    monkeypatch.setattr(FAMO, "backward", backward)
    monkeypatch.setattr(FAMO, "after_optimizer_step", after_optimizer_step)
    trainer.train_step(inputs, targets)
    for (name, buffer), expected in zip(trainer.model.named_buffers(), ordinary.buffers()):
        assert torch.equal(buffer, expected), name
    assert torch.equal(seen["after"], seen["again"])  # the same masks every time
    assert torch.allclose(seen["replayed"], seen["training"], rtol=1e-6, atol=0)  # ... the training forward's
    assert not torch.equal(seen["after"], seen["training"])  # the update did change the losses
    assert seen["rng_kept"]  # the replays leave the global RNG where it was
