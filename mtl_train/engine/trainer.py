"""The training loop: plain PyTorch, batches cut from in-memory tensors on the training device.

The loop never branches on which weighting method runs: every method goes through
:class:`~mtl_train.weighting.base.Weighting` (``backward`` then ``after_optimizer_step``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.engine.outputs import RunWriter
from mtl_train.engine.progress import TrainingProgress
from mtl_train.errors import ConfigError, NonFiniteLossError
from mtl_train.model import MultiTaskModel
from mtl_train.schedules.base import TrainingSchedule
from mtl_train.tasks import Task
from mtl_train.utils.seed import rng_state
from mtl_train.weighting.base import StepContext, Weighting

Metrics = dict[str, dict[str, float]]


@dataclass
class TrainerSettings:
    """``cfg.trainer`` minus device/precision (resolved separately)."""

    batch_size: int = 64
    eval_batch_size: int = 256
    max_epochs: int = 10
    max_steps: int | None = None
    eval_every: int | None = None
    grad_clip: float | None = None
    log_every: int = 10
    progress: str = "auto"
    checkpoint: bool = True

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "max_epochs", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps", "eval_every"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"trainer.{key} must be >= 1 or null, got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"trainer.grad_clip must be > 0 or null, got {self.grad_clip}")


class Trainer:
    """Fits a :class:`MultiTaskModel` on a :class:`MultiTaskData` with a weighting method."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: list[Task],
        weighting: Weighting,
        schedule: TrainingSchedule,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scheduler_interval: str,
        data: MultiTaskData,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        settings: TrainerSettings,
        writer: RunWriter,
        config: dict,
        seed: int,
    ) -> None:
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler.interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        self.model = model
        self.tasks = tasks
        self.task_names = [t.name for t in tasks]
        self.weighting = weighting
        self.schedule = schedule
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.device = device
        self.amp_dtype = amp_dtype
        self.settings = settings
        self.writer = writer
        self.config = config
        needed = sorted({t.target for t in tasks})
        self.splits = {name: self._keep_targets(split, needed).to(device) for name, split in
                       (("train", data.train), ("val", data.val), ("test", data.test))}
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        self.data_generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.epoch = 0
        self.best: dict[str, dict[str, dict[str, float]]] = {}

    @staticmethod
    def _keep_targets(split: TensorSplit, names: list[str]) -> TensorSplit:
        return TensorSplit(split.inputs, {n: split.targets[n] for n in names})

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits["train"]) / self.settings.batch_size)

    @property
    def total_steps(self) -> int:
        total = self.settings.max_epochs * self.steps_per_epoch
        return total if self.settings.max_steps is None else min(total, self.settings.max_steps)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_batches(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        split = self.splits["train"]
        order = torch.randperm(len(split), generator=self.data_generator).to(self.device)
        for start in range(0, len(split), self.settings.batch_size):
            index = order[start:start + self.settings.batch_size]
            yield split.inputs[index], {name: t[index] for name, t in split.targets.items()}

    def task_losses(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """The ``(k,)`` task losses, computed in float32 outside autocast."""
        return torch.stack([task.loss(outputs[task.name].float(), targets[task.target]) for task in self.tasks])

    def _recompute_losses(self, inputs: Tensor, targets: dict[str, Tensor], factors: Tensor) -> Callable[[], Tensor]:
        """A closure giving the scheduled task losses on this batch with the current parameters, without grad."""

        @torch.no_grad()
        def recompute() -> Tensor:
            with self._autocast():
                outputs = self.model(inputs)
            return self.task_losses(outputs, targets) * factors

        return recompute

    def train_step(self, inputs: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One optimisation step; returns the detached losses (the ``k`` task losses, then the backbone's penalty if it
        has one) and the ``(k,)`` effective weights."""
        self.model.train()
        with self._autocast():
            z = self.model.encode(inputs)
            outputs = self.model.decode(z, inputs)
        losses = self.task_losses(outputs, targets)
        factors = self.schedule.factors(self.step, self.step / self.steps_per_epoch).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(
            model=self.model,
            step=self.step,
            scale=self.scaler.scale,
            loss_scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0,
            epoch=self.epoch,
            inputs=inputs,
            shared_representation=z,
            outputs=outputs,
            class_logits={task.name: task.metric.class_logits for task in self.tasks},
            recompute_losses=self._recompute_losses(inputs, targets, factors),
        )
        weights = self.weighting.backward(losses * factors, ctx) * factors
        penalty = self.model.penalty()
        if penalty is not None:
            self.scaler.scale(penalty).backward()
            losses = torch.cat([losses, penalty.detach().float().reshape(1)])
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.weighting.after_optimizer_step(ctx)
        if self.scheduler_interval == "step":
            self.scheduler.step()
        return losses.detach(), weights.detach()

    @torch.no_grad()
    def evaluate(self, split_name: str) -> Metrics:
        """Per-task metrics (plus the mean loss) of the model on a split."""
        self.model.eval()
        split = self.splits[split_name]
        for task in self.tasks:
            task.metric.reset()
        loss_sums = torch.zeros(len(self.tasks), dtype=torch.float64, device=self.device)
        for start in range(0, len(split), self.settings.eval_batch_size):
            inputs = split.inputs[start:start + self.settings.eval_batch_size]
            targets = {name: t[start:start + self.settings.eval_batch_size] for name, t in split.targets.items()}
            with self._autocast():
                outputs = self.model(inputs)
            loss_sums += self.task_losses(outputs, targets).double() * inputs.shape[0]
            for task in self.tasks:
                task.metric.update(outputs[task.name].float(), targets[task.target])
        mean_losses = (loss_sums / len(split)).tolist()
        return {task.name: {**task.metric.compute(), "loss": loss} for task, loss in zip(self.tasks, mean_losses)}

    def _update_best(self, metrics: Metrics) -> None:
        for task in self.tasks:
            for name, value in metrics[task.name].items():
                higher = task.metric.higher_is_better.get(name, False)
                best = self.best.setdefault(task.name, {}).get(name)
                if best is None or (value > best["value"] if higher else value < best["value"]):
                    self.best[task.name][name] = {"value": value, "step": self.step, "epoch": self.epoch}

    def _flush_steps(self, pending: list[tuple[int, Tensor, Tensor]], progress: TrainingProgress) -> None:
        """Write buffered per-step losses/weights (one device sync) and stop on a non-finite loss."""
        steps = [s for s, _, _ in pending]
        losses = torch.stack([l for _, l, _ in pending]).cpu()
        weights = torch.stack([w for _, _, w in pending]).float().cpu()
        self.writer.log_steps(steps, losses, weights)
        pending.clear()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            row, column = bad[0].tolist()
            raise NonFiniteLossError(
                f"the loss {self.writer.loss_names[column]!r} became {losses[row, column].item()} at step {steps[row]}; "
                "try a lower optimizer.lr, trainer.grad_clip=1.0, or trainer.amp=none. "
                f"Rows up to this step are in {self.writer.output_dir}"
            )
        progress.update(steps[-1], losses[-1, :len(self.tasks)].tolist(), weights[-1].tolist())

    def _evaluate_and_log(self, progress: TrainingProgress, checkpoint: bool = True) -> Metrics:
        metrics = self.evaluate("val")
        self.writer.log_eval(self.step, self.epoch, "val", metrics)
        self._update_best(metrics)
        self.weighting.after_evaluation(metrics)
        progress.message(f"[eval] step {self.step} epoch {self.epoch}: " + "; ".join(
            f"{task} " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) for task, values in metrics.items()))
        if checkpoint and self.settings.checkpoint:
            self.writer.save_checkpoint(self.checkpoint_state())
        return metrics

    def checkpoint_state(self) -> dict:
        """Everything needed to inspect or continue the run."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "rng": rng_state(),
            "data_generator": self.data_generator.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "config": self.config,
        }

    def fit(self) -> dict:
        """Train until ``max_steps`` or ``max_epochs``; return the final val/test metrics and the best val ones."""
        total = self.total_steps
        pending: list[tuple[int, Tensor, Tensor]] = []
        evaluated_at, final_val = -1, {}
        epoch_times = []
        with TrainingProgress(self.settings.progress, total, self.task_names) as progress:
            while self.step < total:
                epoch_start = time.perf_counter()
                epoch_loss_sum = torch.zeros(len(self.tasks), device=self.device)
                epoch_steps = 0
                for inputs, targets in self._train_batches():
                    losses, weights = self.train_step(inputs, targets)
                    self.step += 1
                    epoch_loss_sum += losses[:len(self.tasks)]
                    epoch_steps += 1
                    pending.append((self.step, losses, weights))
                    if len(pending) >= self.settings.log_every:
                        self._flush_steps(pending, progress)
                    if self.settings.eval_every is not None and self.step % self.settings.eval_every == 0:
                        if pending:
                            self._flush_steps(pending, progress)
                        final_val, evaluated_at = self._evaluate_and_log(progress), self.step
                    if self.step >= total:
                        break
                self.epoch += 1
                epoch_times.append(time.perf_counter() - epoch_start)
                self.weighting.after_epoch(self.epoch, epoch_loss_sum / epoch_steps)
                if self.scheduler_interval == "epoch":
                    self.scheduler.step()
                if pending:
                    self._flush_steps(pending, progress)
                if self.settings.eval_every is None:
                    final_val, evaluated_at = self._evaluate_and_log(progress), self.step
            if evaluated_at != self.step:
                final_val = self._evaluate_and_log(progress, checkpoint=False)
            final_test = self.evaluate("test")
            self.writer.log_eval(self.step, self.epoch, "test", final_test)
        if self.settings.checkpoint:
            self.writer.save_checkpoint(self.checkpoint_state())
        return {
            "final": {"val": final_val, "test": final_test},
            "best": self.best,
            "higher_is_better": {t.name: {**t.metric.higher_is_better, "loss": False} for t in self.tasks},
            "primary_metric": {t.name: t.metric.primary for t in self.tasks},
            "steps": self.step,
            "epochs": self.epoch,
            "epoch_time_s": epoch_times,
        }
