"""The training loop: plain PyTorch, batches cut from in-memory tensors on the training device, or streamed from
the host when the data does not fit the device (:mod:`mtl_train.engine.batches`).

The loop never branches on which weighting method runs: every method goes through
:class:`~mtl_train.weighting.base.Weighting` (``backward`` then ``after_optimizer_step``). The per-run diagnostics
(``diagnostics=...``, :class:`~mtl_train.diagnostics.sampling.DiagnosticsSampler`) run around the method's backward
on the steps they are due; when off, the step does nothing more.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.diagnostics.gradients import DiagnosticsSettings
from mtl_train.diagnostics.sampling import DiagnosticsSampler
from mtl_train.engine.batches import StreamingLoader, epoch_index_batches, eval_index_batches, place_data
from mtl_train.engine.cuda_graphs import (CudaStepGraph, GraphedSteps, graph_blockers, plain_optimizer_state,
                                          plain_scheduler_state, prepare_capturable_optimizer)
from mtl_train.engine.distributed import Distributed
from mtl_train.engine.outputs import RunWriter
from mtl_train.engine.progress import TrainingProgress
from mtl_train.engine.signals import StopSignals
from mtl_train.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from mtl_train.model import MultiTaskModel
from mtl_train.schedules.base import TrainingSchedule
from mtl_train.tasks import Task
from mtl_train.utils.seed import restore_rng_state, rng_state
from mtl_train.weighting.base import StepContext, Weighting

log = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float]]
NONFINITE_POLICIES = ("abort", "skip")
MODEL_SELECTIONS = ("final", "best_val")
AUTO_OR_BOOL = ("auto", True, False)  # trainer.data_on_device, trainer.pin_memory
# The training loop's position, saved in checkpoints so that a resumed run continues exactly.
LOOP_STATE = ("step", "epoch", "batch_in_epoch", "epoch_generator_state", "epoch_loss_sum", "epoch_steps",
              "epoch_times", "skipped_steps", "evaluated_at", "final_val", "best", "selected", "selection_reference")
# |m_ref| below this is replaced by it in the model-selection score (a reference metric of exactly 0).
SELECTION_EPS = 1e-8


def selection_score(values: dict[str, float], reference: dict[str, float], higher_is_better: dict[str, bool]) -> float:
    """The unit-free score ``trainer.model_selection=best_val`` maximises: the mean over tasks t of the signed
    relative change of the primary validation metric against the run's first validation,

        s = (1 / K) sum_t sign_t (m_t - r_t) / max(|r_t|, SELECTION_EPS),

    sign_t = +1 when higher is better and -1 otherwise (the Δm of Maninis et al., CVPR 2019, with the first
    evaluation as the baseline). Every term is a fraction of its own reference, so accuracy and PSNR in dB, or
    accuracy and MAE, weigh alike: +1 % accuracy and -1 % PSNR cancel, whatever the units."""
    terms = [(1.0 if higher_is_better[task] else -1.0) * (values[task] - reference[task])
             / max(abs(reference[task]), SELECTION_EPS) for task in values]
    return sum(terms) / len(terms)


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
    nonfinite: str = "abort"
    model_selection: str = "final"
    data_on_device: bool | str = "auto"
    data_budget_mb: float = 2048
    num_workers: int = 2
    prefetch_factor: int = 2
    pin_memory: bool | str = "auto"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cuda_graphs, bool):
            raise ConfigError(f"trainer.cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        for key in ("data_on_device", "pin_memory"):
            if getattr(self, key) not in AUTO_OR_BOOL:
                raise ConfigError(f"trainer.{key} must be auto, true or false, got {getattr(self, key)!r}")
        if not self.data_budget_mb >= 0:
            raise ConfigError(f"trainer.data_budget_mb must be >= 0 (MiB), got {self.data_budget_mb}")
        if self.num_workers < 0:
            raise ConfigError(f"trainer.num_workers must be >= 0 (0: batches are gathered in the training process), "
                              f"got {self.num_workers}")
        if self.model_selection not in MODEL_SELECTIONS:
            raise ConfigError(f"trainer.model_selection must be one of {', '.join(MODEL_SELECTIONS)}, "
                              f"got {self.model_selection!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"trainer.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {self.nonfinite!r}")
        for key in ("batch_size", "eval_batch_size", "max_epochs", "log_every", "prefetch_factor"):
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
        distributed: Distributed = Distributed(),
        diagnostics: DiagnosticsSettings = DiagnosticsSettings(),
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
        if settings.batch_size % distributed.world_size:
            raise ConfigError(f"trainer.batch_size={settings.batch_size} (the global batch) must be a multiple of the "
                              f"number of processes, {distributed.world_size}")
        self.distributed = distributed
        self.diagnostics = DiagnosticsSampler(diagnostics, model) if diagnostics.enabled else None
        needed = sorted({t.target for t in tasks})
        self.splits = {name: self._keep_targets(split, needed) for name, split in
                       (("train", data.train), ("val", data.val), ("test", data.test))}
        self.eval_sizes = {name: len(split) for name, split in self.splits.items()}
        self.placement = place_data(settings.data_on_device, settings.data_budget_mb, self.splits.values(),
                                    device)
        if distributed.is_main:
            log.info(f"data loading: {self.placement.reason}")
        if distributed.enabled:  # each rank evaluates every world_size-th row; metric statistics are summed
            for name in ("val", "test"):
                rows = torch.arange(distributed.rank, len(self.splits[name]), distributed.world_size)
                self.splits[name] = self.splits[name].select(rows)
        self.pin_memory = device.type == "cuda" and settings.pin_memory in ("auto", True)
        self.loaders: dict[str, StreamingLoader] = {}  # "train", "eval": created when first used, when streaming
        if not self.placement.streaming:
            self.splits = {name: split.to(device) for name, split in self.splits.items()}
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        self.data_generator = torch.Generator().manual_seed(seed)
        self.epoch_generator_state = self.data_generator.get_state()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_loss_sum = torch.zeros(len(tasks), device=device)
        self.epoch_steps = 0
        self.epoch_times: list[float] = []
        self.skipped_steps = 0
        self.abort_reason: str | None = None
        self._buffers_before_step: list[Tensor] = []
        self._rng_before_step: dict | None = None
        self._weighting_before_step: dict | None = None
        self.evaluated_at = -1
        self.final_val: Metrics = {}
        self.best: dict[str, dict[str, dict[str, float]]] = {}
        self.selected: dict | None = None
        self.selection_reference: dict[str, float] | None = None
        self.resumed_from: Path | None = None  # the directory of the run this one continues (trainer.resume)
        self.graphs = self._graphed_steps(settings.cuda_graphs)

    def _graphed_steps(self, requested: bool) -> GraphedSteps | None:
        """The CUDA-graph runner of ``trainer.cuda_graphs=true`` (:mod:`mtl_train.engine.cuda_graphs`); None when not
        asked for, or, with one warning, when these settings cannot be captured (then eager steps run)."""
        self.graph_blockers: list[str] = []
        if not requested:
            return None
        if self.device.type != "cuda":
            raise ConfigError(f"trainer.cuda_graphs=true needs a GPU (CUDA graphs record GPU kernels) and the training "
                              f"device is {self.device.type}; set trainer.device=cuda, or trainer.cuda_graphs=false")
        self.graph_blockers = graph_blockers(self.amp_dtype, self.settings.nonfinite, self.distributed.enabled,
                                             self.diagnostics is not None, self.optimizer, self.weighting)
        if self.graph_blockers:
            log.warning(f"trainer.cuda_graphs=true: running eager steps, since {'; '.join(self.graph_blockers)}")
            return None
        return self._graph_runner(CudaStepGraph)

    def _graph_runner(self, graph_type: type) -> GraphedSteps:
        """A :class:`GraphedSteps` driving this trainer's steps, recording them with ``graph_type``."""
        return GraphedSteps(eager_step=self._eager_step, captured_step=self._captured_step,
                            snapshot=self._snapshot_for_capture,
                            prepare=lambda: prepare_capturable_optimizer(self.optimizer, self.device),
                            device=self.device, graph_type=graph_type)

    @property
    def cuda_graph_fallback(self) -> str | None:
        """Why a run with ``trainer.cuda_graphs=true`` runs (or from some step on ran) eager steps; None when graphs
        are in use or were not asked for."""
        if self.graph_blockers:
            return "; ".join(self.graph_blockers)
        return self.graphs.fallback if self.graphs is not None else None

    @staticmethod
    def _keep_targets(split: TensorSplit, names: list[str]) -> TensorSplit:
        return dataclasses.replace(split, targets={n: split.targets[n] for n in names})

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits["train"]) / self.settings.batch_size)

    @property
    def total_steps(self) -> int:
        total = self.settings.max_epochs * self.steps_per_epoch
        return total if self.settings.max_steps is None else min(total, self.settings.max_steps)

    def _autocast(self, cache_enabled: bool = True):
        """Autocast to ``amp_dtype`` (nothing when None); a CUDA-graph capture needs ``cache_enabled=False``, so that
        the weights are cast inside the graph, not once outside it."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache_enabled)

    def _loader(self, name: str) -> StreamingLoader:
        """The streaming path's loader ``name`` ("train", or "eval" for val and test, so an evaluation in the middle
        of an epoch leaves the training pass where it is), created on first use."""
        if name not in self.loaders:
            self.loaders[name] = StreamingLoader(self.splits, self.device, self.settings.num_workers,
                                                 self.settings.prefetch_factor, self.pin_memory)
        return self.loaders[name]

    def close_loaders(self) -> None:
        """Stop the streaming path's worker processes (a later pass starts them again)."""
        for loader in self.loaders.values():
            loader.close()
        self.loaders.clear()

    def _train_batches(self) -> Iterator[tuple[Tensor, dict[str, Tensor], float]]:
        """The current epoch's remaining batches: a permutation drawn from the data generator at the epoch's start
        (drawn again from the saved state when a run resumes mid-epoch), from batch ``batch_in_epoch`` on; under
        torchrun, this rank's rows of each global batch and its share (:meth:`Distributed.shard`). Gathered on the
        device, or by the streaming loader: the same rows either way."""
        split = self.splits["train"]
        if self.batch_in_epoch == 0:
            self.epoch_generator_state = self.data_generator.get_state()
        else:
            self.data_generator.set_state(self.epoch_generator_state)
        order = torch.randperm(len(split), generator=self.data_generator)
        if not self.placement.streaming:
            for index, share in epoch_index_batches(order.to(self.device), self.settings.batch_size,
                                                    self.batch_in_epoch, self.distributed):
                yield *split.batch(index), share
            return
        plan = epoch_index_batches(order, self.settings.batch_size, self.batch_in_epoch, self.distributed)
        batches = self._loader("train").batches("train", [index for index, _ in plan])
        for (inputs, targets), (_, share) in zip(batches, plan):
            yield inputs, targets, share

    def _eval_batches(self, split_name: str) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """The split's (this rank's) rows in order, in batches of ``eval_batch_size``."""
        split, size = self.splits[split_name], self.settings.eval_batch_size
        if self.placement.streaming:
            yield from self._loader("eval").batches(split_name, eval_index_batches(len(split), size))
            return
        for start in range(0, len(split), size):
            yield split.inputs[start:start + size], {name: t[start:start + size] for name, t in split.targets.items()}

    def task_losses(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """The ``(k,)`` task losses, computed in float32 outside autocast."""
        return torch.stack([task.compute_loss(outputs[task.name].float(), targets[task.target]) for task in self.tasks])

    def _forward_rng_state(self) -> tuple[Tensor, Tensor | None]:
        """The global torch RNG states (the CPU's, and the training device's when it is a GPU) that the training
        forward is about to draw its dropout masks from."""
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def _recompute_losses(self, inputs: Tensor, targets: dict[str, Tensor], factors: Tensor, share: float,
                          rng: tuple[Tensor, Tensor | None]) -> Callable[..., Tensor]:
        """A closure giving the scheduled task losses on this (global) batch with the current parameters, without
        grad (FAMO's loss after the update); ``recompute(parameters)`` swaps in ``parameters`` (name -> tensor, e.g.
        the affinity's lookahead shared parameters) with ``torch.func.functional_call``, the model left as it is.
        The forward is the training forward's function: train mode, dropout replaying the training forward's masks
        (the RNG states ``rng``, taken before it; the global RNGs are left as they were), normalisation by the
        batch's statistics without updating the running ones
        (:meth:`MultiTaskModel.frozen_normalization_statistics`). So the losses before and after the update differ
        by the update only, calling it again gives the same losses, and BatchNorm's statistics move once per step."""
        cpu_state, device_state = rng

        @torch.no_grad()
        def recompute(parameters: dict[str, Tensor] | None = None) -> Tensor:
            devices = [self.device] if device_state is not None else []
            with torch.random.fork_rng(devices, device_type=self.device.type), \
                    self.model.frozen_normalization_statistics():
                torch.set_rng_state(cpu_state)
                if device_state is not None:
                    torch.cuda.set_rng_state(device_state, self.device)
                with self._autocast():
                    outputs = (self.model(inputs) if parameters is None else
                               torch.func.functional_call(self.model, parameters, (inputs,)))
            return self.distributed.global_losses(self.task_losses(outputs, targets), share) * factors

        return recompute

    def train_step(self, inputs: Tensor, targets: dict[str, Tensor], share: float = 1.0) -> tuple[Tensor, Tensor]:
        """One optimisation step; returns the detached losses (the ``k`` task losses, then the backbone's penalty if it
        has one) and the ``(k,)`` effective weights. ``share`` is this rank's share of the global batch (torchrun).
        With CUDA graphs in use, a replay of the captured step (:meth:`_captured_step`) where one is ready."""
        if not self.model.training:  # only evaluate() switches modes; walking every module each step costs ~2 %
            self.model.train()
        if self.graphs is not None:
            factors = self.schedule.factors(self.step, self.step / self.steps_per_epoch)
            return self.graphs.step(self.step + 1, inputs, targets, factors)
        return self._eager_step(inputs, targets, share)

    def _eager_step(self, inputs: Tensor, targets: dict[str, Tensor], share: float = 1.0) -> tuple[Tensor, Tensor]:
        """:meth:`train_step` run op by op: it checks the losses and gradients for NaN/inf on the host before the
        optimizer steps (``trainer.nonfinite``)."""
        self._snapshot_before_step()
        forward_rng = self._forward_rng_state()
        with self._autocast():
            z = self.model.encode(inputs)
            outputs = self.model.decode(z, inputs)
        losses = self.distributed.global_losses(self.task_losses(outputs, targets), share)
        finite = torch.isfinite(losses)
        if not finite.all():
            task = self.task_names[int((~finite).nonzero()[0])]
            return self._non_finite_step(losses, f"the loss of task {task!r}")
        schedule_factors = self.schedule.factors(self.step, self.step / self.steps_per_epoch)
        factors = schedule_factors.to(self.device)
        scheduled = losses * factors
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
            recompute_losses=self._recompute_losses(inputs, targets, factors, share, forward_rng),
            distributed=self.distributed,
        )
        if self.diagnostics is not None:
            self.diagnostics.before_backward(self.step, scheduled, z, self.weighting, self.scaler.scale,
                                             ctx.loss_scale)
        weights = self.weighting.backward(scheduled, ctx) * factors
        if self.diagnostics is not None:
            self.diagnostics.after_backward(self.step, scheduled, self.optimizer.param_groups[0]["lr"],
                                            ctx.recompute_losses)
        penalty = self.model.penalty()
        if penalty is not None:
            self.scaler.scale(penalty).backward()
            losses = torch.cat([losses, penalty.detach().float().reshape(1)])
        self._freeze_switched_off_tasks(schedule_factors)
        self.distributed.average_gradients([p for group in self.optimizer.param_groups for p in group["params"]])
        overflowed = False
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            # GradScaler skips the optimizer step when the gradients overflowed; the method must then not move either
            overflowed = not self._gradients_finite(self._named_gradients())
        else:
            bad = self._non_finite_gradient()
            if bad is not None:
                self.optimizer.zero_grad(set_to_none=True)
                return self._non_finite_step(losses, f"the gradient of parameter {bad!r}")
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if overflowed:
            self.weighting.load_state_dict(self._weighting_before_step)
        else:
            self.weighting.after_optimizer_step(ctx)
        if self.scheduler_interval == "step":
            self.scheduler.step()
        return losses.detach(), weights.detach()

    def _captured_step(self, inputs: Tensor, targets: dict[str, Tensor], factors: Tensor, host_factors: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """The step a CUDA graph records: :meth:`_eager_step`'s computation on the graph's static ``inputs``,
        ``targets`` and schedule ``factors`` (``host_factors`` their values at the capture, whose zeros every replay
        shares), with nothing read on the host: the optimizer steps whatever the losses and gradients hold, and the
        ``(2,)`` flags "losses finite", "gradients finite" are returned with the losses and weights for the trainer to
        read later (:meth:`_flush_steps`). No fp16 loss scaling (graphs fall back to eager steps with it)."""
        self.optimizer.zero_grad(set_to_none=True)  # the backward then writes the graph's own gradient tensors
        with self._autocast(cache_enabled=False):
            z = self.model.encode(inputs)
            outputs = self.model.decode(z, inputs)
        losses = self.task_losses(outputs, targets)
        ctx = StepContext(model=self.model, step=self.step, scale=self.scaler.scale, epoch=self.epoch, inputs=inputs,
                          shared_representation=z, outputs=outputs,
                          class_logits={task.name: task.metric.class_logits for task in self.tasks},
                          distributed=self.distributed)
        weights = self.weighting.backward(losses * factors, ctx) * factors
        penalty = self.model.penalty()
        if penalty is not None:
            penalty.backward()
            losses = torch.cat([losses, penalty.detach().float().reshape(1)])
        self._freeze_switched_off_tasks(host_factors)
        finite = torch.stack([torch.isfinite(losses).all(), self._all_finite(self._named_gradients())])
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.weighting.after_optimizer_step(ctx)
        return losses.detach(), weights.detach(), finite

    def _snapshot_for_capture(self) -> Callable[[], None]:
        """Keep what a failed CUDA-graph capture may have changed on the host (the method's state, the RNGs); return
        the callable that puts it back and drops any gradient the capture left."""
        weighting, rng = copy.deepcopy(self.weighting.state_dict()), rng_state()

        def restore() -> None:
            self.weighting.load_state_dict(weighting)
            restore_rng_state(rng)
            self.optimizer.zero_grad(set_to_none=True)

        return restore

    def _snapshot_before_step(self) -> None:
        """Keep what a step that is left out must put back. ``trainer.nonfinite=skip``: the model's buffers
        (BatchNorm's statistics), the global RNG states (dropout masks, methods that draw from them) and the
        weighting's whole ``state_dict`` (buffers, parameters and extra state: random generators, step counters,
        an optimizer of its own). fp16: the weighting's ``state_dict`` (GradScaler may skip the step).
        Deep copies: one clone of the method's state per step, so only when it may be needed."""
        if self.settings.nonfinite == "skip":
            self._buffers_before_step = [b.clone() for b in self.model.buffers()]
            self._rng_before_step = rng_state()
        if self.settings.nonfinite == "skip" or self.scaler.is_enabled():
            self._weighting_before_step = copy.deepcopy(self.weighting.state_dict())

    def _named_gradients(self) -> list[tuple[str, Tensor]]:
        """``(name, grad)`` of every model and weighting parameter that has a gradient."""
        named = [*self.model.named_parameters(), *(("weighting." + n, p) for n, p in self.weighting.named_parameters())]
        return [(name, p.grad) for name, p in named if p.grad is not None]

    @staticmethod
    def _all_finite(named: list[tuple[str, Tensor]]) -> Tensor:
        """A 0-dim bool tensor: whether every gradient is finite, from one fused max-abs over all of them (NaN and inf
        propagate through it and, unlike a 2-norm, it cannot overflow)."""
        return torch.isfinite(torch.stack(torch._foreach_norm([grad for _, grad in named], math.inf))).all()

    @classmethod
    def _gradients_finite(cls, named: list[tuple[str, Tensor]]) -> bool:
        """:meth:`_all_finite` read with one device sync. Under fp16 this is the sync GradScaler makes anyway to decide
        whether to step, so it adds no stall."""
        return bool(cls._all_finite(named))

    def _freeze_switched_off_tasks(self, factors: Tensor) -> None:
        """Drop the gradients of the own parameters of every task the schedule switched off in this step (factor 0,
        read on the host: no sync), so the optimizer skips them: a zero gradient alone would still move them through
        Adam's momentum or weight decay."""
        for name, factor in zip(self.task_names, factors.tolist()):
            if factor == 0:
                for p in self.model.task_parameters(name):
                    p.grad = None

    def _non_finite_gradient(self) -> str | None:
        """The name of the first model or weighting parameter whose gradient is not finite (one device sync when
        all are), or None."""
        named = self._named_gradients()
        if self._gradients_finite(named):
            return None
        return next(name for name, grad in named if not torch.isfinite(grad).all())

    def _non_finite_step(self, losses: Tensor, what: str) -> tuple[Tensor, Tensor]:
        """A step whose ``what`` (a loss or a gradient) is not finite: the optimizer is not stepped and the row is
        returned with its non-finite values (weights NaN). ``trainer.nonfinite=skip`` counts the step, puts back
        what :meth:`_snapshot_before_step` kept (so model, method and RNGs are as if the batch had not been drawn)
        and goes on; ``abort`` sets :attr:`abort_reason`, which :meth:`fit` raises once the row is written."""
        if self.settings.nonfinite == "abort":
            self.abort_reason = self._abort_message(what, self.step + 1)
        else:
            self.skipped_steps += 1
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), self._buffers_before_step):
                    buffer.copy_(saved)
            self.weighting.load_state_dict(self._weighting_before_step)
            restore_rng_state(self._rng_before_step)
            if self.scheduler_interval == "step":
                self.scheduler.step()
        losses = torch.cat([losses.detach(), losses.new_full((len(self.writer.loss_names) - len(losses),), math.nan)])
        return losses, torch.full((len(self.tasks),), math.nan, device=self.device)

    def _abort_message(self, what: str, step: int) -> str:
        return (f"{what} is not finite at step {step} (trainer.nonfinite=abort); try a lower optimizer.lr, "
                "trainer.grad_clip=1.0 or trainer.amp=none, or trainer.nonfinite=skip to skip such steps. "
                f"The rows up to this step and the last checkpoint are in {self.writer.output_dir}")

    @torch.no_grad()
    def evaluate(self, split_name: str) -> Metrics:
        """Per-task metrics (plus the mean loss) of the model on a split."""
        self.model.eval()
        for task in self.tasks:
            task.metric.reset()
        loss_sums = torch.zeros(len(self.tasks), dtype=torch.float64, device=self.device)
        for inputs, targets in self._eval_batches(split_name):
            with self._autocast():
                outputs = self.model(inputs)
            loss_sums += self.task_losses(outputs, targets).double() * inputs.shape[0]
            for task in self.tasks:
                task.update_metric(outputs[task.name].float(), targets[task.target])
        self.distributed.sum_(loss_sums)
        for task in self.tasks:
            self.distributed.sum_metric_state(task.metric, self.device)
        mean_losses = (loss_sums / self.eval_sizes[split_name]).tolist()
        return {task.name: {**task.metric.compute(), "loss": loss} for task, loss in zip(self.tasks, mean_losses)}

    def _update_best(self, metrics: Metrics) -> None:
        for task in self.tasks:
            for name, value in metrics[task.name].items():
                higher = task.metric.higher_is_better.get(name, False)
                best = self.best.setdefault(task.name, {}).get(name)
                if best is None or (value > best["value"] if higher else value < best["value"]):
                    self.best[task.name][name] = {"value": value, "step": self.step, "epoch": self.epoch}

    def _flush_steps(self, pending: list[tuple[int, Tensor, Tensor]], progress: TrainingProgress) -> None:
        """Write buffered per-step losses/weights (one device sync) and the diagnostics' rows. With CUDA graphs, first
        read whether the replayed steps were finite: under ``trainer.nonfinite=abort`` the rows after the first that
        was not are dropped and, once the rows up to it are written, :class:`NonFiniteLossError` is raised."""
        non_finite = self.graphs.first_non_finite() if self.graphs is not None else None
        if non_finite is not None:
            step, what = non_finite
            pending[:] = [row for row in pending if row[0] <= step]
            self.abort_reason = self._abort_message(what, step)
        if self.diagnostics is not None:
            self.diagnostics.flush(self.writer)
        if pending:
            steps = [s for s, _, _ in pending]
            losses = torch.stack([l for _, l, _ in pending]).cpu()
            weights = torch.stack([w for _, _, w in pending]).float().cpu()
            self.writer.log_steps(steps, losses, weights)
            pending.clear()
            progress.update(steps[-1], losses[-1, :len(self.tasks)].tolist(), weights[-1].tolist())
        if non_finite is not None:
            raise NonFiniteLossError(self.abort_reason)

    def _select(self, metrics: Metrics) -> None:
        """``trainer.model_selection=best_val`` (Kurin et al., NeurIPS 2022: "model chosen by validation accuracy"):
        when :func:`selection_score` against the run's first validation (:attr:`selection_reference`, kept in the
        checkpoint) improves, test this model, keep the result and save it as ``checkpoints/best.pt``."""
        primary = {t.name: metrics[t.name][t.metric.primary] for t in self.tasks}
        if self.selection_reference is None:
            self.selection_reference = primary
        higher = {t.name: t.metric.higher_is_better[t.metric.primary] for t in self.tasks}
        score = selection_score(primary, self.selection_reference, higher)
        if self.selected is None or score > self.selected["score"]:
            self.selected = {"step": self.step, "epoch": self.epoch, "score": score, "val": metrics,
                             "test": self.evaluate("test")}
            if self.settings.checkpoint:
                self.writer.save_best_model({"model": self.model.state_dict(), "step": self.step,
                                             "epoch": self.epoch, "score": score, "config": self.config})

    def _evaluate_and_log(self, progress: TrainingProgress, checkpoint: bool = True) -> Metrics:
        metrics = self.evaluate("val")
        self.writer.log_eval(self.step, self.epoch, "val", metrics)
        self._update_best(metrics)
        if self.settings.model_selection == "best_val":
            self._select(metrics)
        self.weighting.after_evaluation(metrics)
        progress.message(f"[eval] step {self.step} epoch {self.epoch}: " + "; ".join(
            f"{task} " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()) for task, values in metrics.items()))
        if checkpoint and self.settings.checkpoint:
            self.writer.save_checkpoint(self.checkpoint_state())
        return metrics

    def checkpoint_state(self) -> dict:
        """Everything needed to inspect the run or continue it exactly (:meth:`load_checkpoint_state`)."""
        optimizer, scheduler = self.optimizer.state_dict(), self.scheduler.state_dict()
        if self.graphs is not None:  # it keeps learning rates as device tensors; the checkpoint has them as floats
            optimizer, scheduler = plain_optimizer_state(optimizer), plain_scheduler_state(scheduler)
        return {
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            "scheduler": scheduler,
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "rng": rng_state(),
            "data_generator": self.data_generator.get_state(),
            "loop": {name: getattr(self, name) for name in LOOP_STATE},
            "config": self.config,
        }

    def load_checkpoint_state(self, state: dict) -> None:
        """Continue from :meth:`checkpoint_state`: model, optimizer, scheduler, scaler, weighting, RNGs, data order
        and the loop's position, so the rest of the run is the uninterrupted run's."""
        try:
            self.model.load_state_dict(state["model"])
            self.weighting.load_state_dict(state["weighting"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"trainer.resume: the checkpoint does not fit this run's model/optimizer/weighting ({error}); resume "
                "with the configuration it was written with (its .hydra/config.yaml), or start afresh with trainer.resume=false"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.data_generator.set_state(state["data_generator"])
        for name, value in state["loop"].items():
            setattr(self, name, value.to(self.device) if isinstance(value, Tensor) else value)
        self.resumed_from = state.get("run_dir")

    def _stop(self, signum: int, pending: list[tuple[int, Tensor, Tensor]], progress: TrainingProgress) -> None:
        """Flush, save a checkpoint and raise :class:`TrainingInterrupted` (after SIGINT/SIGTERM)."""
        self._flush_steps(pending, progress)
        path = self.writer.save_checkpoint(self.checkpoint_state())
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} received: stopped after step {self.step}, checkpoint saved to {path}; "
            f"continue with `mtl-train <same overrides> hydra.run.dir={self.writer.output_dir} trainer.resume=true`",
            signum,
        )

    def _end_epoch(self, seconds: float) -> None:
        """Close an epoch whose every batch was trained on: count it, give the method the epoch's mean training
        losses (:meth:`Weighting.after_epoch`) and step an epoch-interval scheduler."""
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_times.append(seconds)
        self.weighting.after_epoch(self.epoch, self.epoch_loss_sum / max(self.epoch_steps, 1))
        self.epoch_loss_sum.zero_()
        self.epoch_steps = 0
        if self.scheduler_interval == "epoch":
            self.scheduler.step()

    def fit(self) -> dict:
        """Train until ``max_steps`` or ``max_epochs`` (from where a resumed run left off); return the final
        val/test metrics and the best val ones. SIGINT/SIGTERM stop after the current step with a checkpoint.
        The streaming path's workers are stopped when it returns or raises.

        Only complete epochs count (``epochs``, ``epoch_time_s``, :meth:`Weighting.after_epoch`, an epoch
        scheduler, the per-epoch evaluation): when ``max_steps`` stops the run mid-epoch, the epoch's position, data
        order and running loss sums stay in the loop state, so a run resumed with a larger ``max_steps`` finishes
        that epoch with the same permutation, as an uninterrupted run would."""
        try:
            return self._fit()
        finally:
            self.close_loaders()

    def _fit(self) -> dict:
        """:meth:`fit`'s loop and its result."""
        total = self.total_steps
        pending: list[tuple[int, Tensor, Tensor]] = []
        if self.selected is not None and self.resumed_from is not None and self.settings.checkpoint:
            self.writer.copy_best_model(self.resumed_from)  # the selected model so far, when in another directory
        with TrainingProgress(self.settings.progress, total, self.task_names) as progress, StopSignals() as signals:
            while self.step < total:
                epoch_start = time.perf_counter()
                for inputs, targets, share in self._train_batches():
                    skipped = self.skipped_steps
                    losses, weights = self.train_step(inputs, targets, share)
                    self.step += 1
                    self.batch_in_epoch += 1
                    if self.skipped_steps == skipped:
                        self.epoch_loss_sum += losses[:len(self.tasks)]
                        self.epoch_steps += 1
                    pending.append((self.step, losses, weights))
                    if self.abort_reason is not None:
                        self._flush_steps(pending, progress)
                        raise NonFiniteLossError(self.abort_reason)
                    if len(pending) >= self.settings.log_every:
                        self._flush_steps(pending, progress)
                    if self.settings.eval_every is not None and self.step % self.settings.eval_every == 0:
                        self._flush_steps(pending, progress)
                        self.final_val, self.evaluated_at = self._evaluate_and_log(progress), self.step
                    if self.distributed.any(signals.signum is not None, self.device):
                        self._stop(signals.signum or signal.SIGTERM, pending, progress)
                    if self.step >= total:
                        break
                if self.batch_in_epoch < self.steps_per_epoch:  # max_steps stopped mid-epoch: a resume finishes it
                    break
                self._end_epoch(time.perf_counter() - epoch_start)
                self._flush_steps(pending, progress)
                if self.settings.eval_every is None:
                    self.final_val, self.evaluated_at = self._evaluate_and_log(progress), self.step
            self._flush_steps(pending, progress)
            if self.evaluated_at != self.step:
                self.final_val = self._evaluate_and_log(progress, checkpoint=False)
            final_test = self.evaluate("test")
            self.writer.log_eval(self.step, self.epoch, "test", final_test)
        if self.settings.checkpoint:
            self.writer.save_checkpoint(self.checkpoint_state())
        return {
            "final": {"val": self.final_val, "test": final_test},
            "best": self.best,
            "higher_is_better": {t.name: {**t.metric.higher_is_better, "loss": False} for t in self.tasks},
            "primary_metric": {t.name: t.metric.primary for t in self.tasks},
            "steps": self.step,
            "epochs": self.epoch,
            "skipped_steps": self.skipped_steps,
            "epoch_time_s": self.epoch_times,
            "data_loading": self.placement.summary(self.settings.num_workers, self.settings.prefetch_factor,
                                                   self.pin_memory),
            **({"selected": self.selected} if self.selected is not None else {}),
            **({"cuda_graphs": self.cuda_graphs_summary()} if self.settings.cuda_graphs else {}),
        }

    def cuda_graphs_summary(self) -> dict:
        """summary.json's ``cuda_graphs``: whether replays ran, the reason for eager steps, and the step counts."""
        if self.graphs is None:
            return {"used": False, "fallback": self.cuda_graph_fallback, "graphs": 0, "graphed_steps": 0,
                    "eager_steps": self.step}
        return self.graphs.summary()
