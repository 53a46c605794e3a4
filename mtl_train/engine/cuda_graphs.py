"""CUDA graphs for the training step (``trainer.cuda_graphs=true``).

On a GPU, a small multi-task model spends its step launching kernels, not computing: a MultiLeNet step is a few
hundred small kernels, each launched by Python. A CUDA graph records the kernels of one step once and replays them
all with one launch (NVIDIA's CUDA Programming Guide, "CUDA Graphs"; PyTorch's ``torch.cuda.graph``, "CUDA Graphs"
in the CUDA semantics notes, whose whole-network recipe this follows).

What a graph holds: the forward, the task losses, the weighting method's backward (its per-task backwards and its
rule), the backbone's penalty, a finiteness check of the losses and gradients, gradient clipping, the optimizer step
and the method's ``after_optimizer_step``. The optimizer runs in its capturable mode with its learning rates as
device tensors, so a learning-rate scheduler, stepped on the host between replays, changes the rate the replays use
(:func:`prepare_capturable_optimizer`).

Static shapes and addresses. A replay reads and writes the addresses it recorded, so each batch is copied into the
graph's own input tensors first, and a graph is kept per key (batch shape, which tasks the schedule switches on):
the epoch's last, smaller batch and each pattern of an alternating schedule get their own graph, up to
:data:`MAX_GRAPHS`; steps of further keys run eagerly. The schedule's factor values are copied into the graph's
factor tensor whenever they change.

Warm-up. A key's first :data:`WARMUP_STEPS` steps are ordinary eager steps, run on a side stream, so that lazy
initialisation (library handles, the optimizer's state, a method's buffers) is done before the capture. They are
steps of the run like any other: a run with graphs is the same run, its first steps of each key eager.

No host reads. A replayed step reads nothing back to the host. Whether its losses and gradients were finite stays on
the device until the trainer writes its buffered rows (every ``trainer.log_every`` steps, one sync); with
``trainer.nonfinite=abort`` the run then stops at the first non-finite step and writes the rows up to it, as an eager
run does. The replays after it, already run, are not written, and no checkpoint is taken after them.

What falls back to eager steps, with one warning (:func:`graph_blockers`): fp16 (its loss scale is read on the host
every step), ``trainer.nonfinite=skip`` (it puts state back from the host), torchrun (the all-reduce is not
captured), per-run diagnostics (sampled on the host), an optimizer without a capturable mode, a weighting method not
marked :attr:`~mtl_train.weighting.base.Weighting.cuda_graph_safe`, and any capture that fails (an operation that
synchronises with the host, a data-dependent shape): then the method's state and the RNG are put back as they were
before the capture and every later step runs eagerly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtl_train.weighting.base import Weighting

log = logging.getLogger(__name__)

#: Eager steps of a key before its graph is captured (PyTorch's ``make_graphed_callables`` warms up three times).
WARMUP_STEPS = 3
#: The most graphs a run keeps (one per batch shape and pattern of scheduled tasks).
MAX_GRAPHS = 16

GraphKey = tuple[tuple[int, ...], tuple[bool, ...]]
#: What the captured step returns: the detached losses, the ``(k,)`` weights, and ``(2,)`` bool flags: the losses
#: were finite, the gradients were finite.
StepOutputs = tuple[Tensor, Tensor, Tensor]


def graph_blockers(amp_dtype: torch.dtype | None, nonfinite: str, distributed: bool, diagnostics: bool,
                   optimizer: torch.optim.Optimizer, weighting: Weighting) -> list[str]:
    """Why the training step cannot be captured with these settings (empty: it can). Each reason names the key to
    change."""
    reasons = []
    if amp_dtype is torch.float16:
        reasons.append("trainer.amp=fp16 reads the loss scale on the host every step (use trainer.amp=bf16 or none)")
    if nonfinite == "skip":
        reasons.append("trainer.nonfinite=skip puts the state back from the host (use trainer.nonfinite=abort)")
    if distributed:
        reasons.append("under torchrun the gradient all-reduce is not captured")
    if diagnostics:
        reasons.append("the per-run diagnostics sample on the host (use diagnostics=off)")
    if "capturable" not in optimizer.defaults:
        reasons.append(f"optimizer {type(optimizer).__name__} has no capturable mode (use optimizer=adam, adamw or sgd)")
    if not weighting.cuda_graph_safe:
        reasons.append(f"weighting {type(weighting).__name__} is not marked CUDA-graph safe (its step reads values on "
                       "the host or keeps per-step state outside device tensors)")
    return reasons


def prepare_capturable_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put ``optimizer`` in its capturable mode (on a device that has one) with every group's learning rate a 0-dim
    tensor on ``device``, which a scheduler then updates in place (``fill_``), and every state ``step`` counter on the
    device, as capturable steps need. Idempotent; called before the first capture, after any checkpoint was
    loaded."""
    capturable = device.type == "cuda"  # the CPU has no capturable mode (nor graphs)
    for group in optimizer.param_groups:
        if capturable:
            group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if capturable and isinstance(state.get("step"), Tensor) and state["step"].device != p.device:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def plain_optimizer_state(state: dict) -> dict:
    """``optimizer.state_dict()`` as a non-capturable optimizer with float learning rates would give it: tensor
    ``lr`` / ``initial_lr`` become floats and ``capturable`` False, so that a checkpoint of a run with graphs resumes
    with or without them."""
    groups = [{**group, **{key: float(value) for key, value in group.items()
                           if key in ("lr", "initial_lr") and isinstance(value, Tensor)},
               **({"capturable": False} if "capturable" in group else {})} for group in state["param_groups"]]
    return {**state, "param_groups": groups}


def plain_scheduler_state(state: dict) -> dict:
    """``scheduler.state_dict()`` with the learning rates it keeps (``base_lrs``, ``_last_lr``) as floats."""
    return {key: [float(v) if isinstance(v, Tensor) else v for v in value] if isinstance(value, list) else value
            for key, value in state.items()}


class CudaStepGraph:
    """One training step recorded as a CUDA graph: constructing it captures ``body`` (its kernels are recorded, not
    run; :attr:`outputs` are the tensors the replays write), :meth:`replay` runs them."""

    def __init__(self, body: Callable[[], StepOutputs]) -> None:
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the streaming loader's pin-memory thread may allocate while the step is captured
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = body()

    def replay(self) -> None:
        self.graph.replay()

    @staticmethod
    def warm_up(step: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Run an eager step on a side stream, between device synchronisations, as a capture's warm-up must."""
        torch.cuda.synchronize()
        with torch.cuda.stream(torch.cuda.Stream()):
            result = step()
        torch.cuda.synchronize()
        return result


@dataclass
class CapturedStep:
    """A key's graph and the static tensors it reads: the batch, its targets and the schedule's factors (with the
    host values last copied in)."""

    graph: CudaStepGraph
    inputs: Tensor
    targets: dict[str, Tensor]
    factors: Tensor
    host_factors: Tensor

    def load(self, inputs: Tensor, targets: dict[str, Tensor], factors: Tensor) -> None:
        """Copy a batch (and the factors, when they changed) into the static tensors."""
        self.inputs.copy_(inputs)
        for name, target in targets.items():
            self.targets[name].copy_(target)
        if not torch.equal(factors, self.host_factors):
            self.factors.copy_(factors.pin_memory() if self.factors.is_cuda else factors, non_blocking=True)
            self.host_factors = factors


@dataclass
class GraphedSteps:
    """Runs the training steps of a run with ``trainer.cuda_graphs=true``: per key (module docstring), warm-up steps
    eagerly, then one capture, then replays.

    ``eager_step(inputs, targets)`` is the trainer's ordinary step; ``captured_step(inputs, targets, factors,
    host_factors)`` the same step without host reads, returning :data:`StepOutputs`; ``snapshot()`` returns a
    callable that puts back what a failed capture may have changed (the method's state, the RNGs);
    ``prepare()`` readies the optimizer before the first capture (:func:`prepare_capturable_optimizer`).
    ``graph_type`` is :class:`CudaStepGraph` (tests pass a stand-in)."""

    eager_step: Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, Tensor]]
    captured_step: Callable[[Tensor, dict[str, Tensor], Tensor, Tensor], StepOutputs]
    snapshot: Callable[[], Callable[[], None]]
    prepare: Callable[[], None]
    device: torch.device
    graph_type: type = CudaStepGraph
    fallback: str | None = None
    graphs: dict[GraphKey, CapturedStep] = field(default_factory=dict)
    seen: Counter = field(default_factory=Counter)
    pending_flags: list[tuple[int, Tensor]] = field(default_factory=list)
    graphed_steps: int = 0
    eager_steps: int = 0

    def step(self, step: int, inputs: Tensor, targets: dict[str, Tensor], factors: Tensor) -> tuple[Tensor, Tensor]:
        """Train step number ``step`` (counting from 1) on a batch with the schedule's host ``factors``; returns the
        detached losses and weights, as the eager step does."""
        key = (tuple(inputs.shape), tuple(bool(f) for f in factors.tolist()))
        captured = self.graphs.get(key)
        if captured is None and self.fallback is None and len(self.graphs) < MAX_GRAPHS:
            if self.seen[key] < WARMUP_STEPS:
                self.seen[key] += 1
                self.eager_steps += 1
                return self.graph_type.warm_up(lambda: self.eager_step(inputs, targets))
            captured = self._capture(key, inputs, targets, factors)
        if captured is None:
            self.eager_steps += 1
            return self.eager_step(inputs, targets)
        captured.load(inputs, targets, factors)
        captured.graph.replay()
        losses, weights, finite = (output.clone() for output in captured.graph.outputs)
        self.pending_flags.append((step, finite))
        self.graphed_steps += 1
        return losses, weights

    def _capture(self, key: GraphKey, inputs: Tensor, targets: dict[str, Tensor], factors: Tensor
                 ) -> CapturedStep | None:
        """Capture the key's graph on static copies of this batch; None (and eager steps from now on) when the
        capture fails."""
        self.prepare()
        inputs, targets = inputs.clone(), {name: target.clone() for name, target in targets.items()}
        device_factors = factors.to(self.device)
        restore = self.snapshot()
        try:
            graph = self.graph_type(lambda: self.captured_step(inputs, targets, device_factors, factors))
        except (RuntimeError, NotImplementedError) as error:
            restore()
            self.fallback = f"capturing the step failed ({type(error).__name__}: {str(error).splitlines()[0]})"
            log.warning(f"trainer.cuda_graphs=true: {self.fallback}; running eager steps from now on")
            return None
        self.graphs[key] = CapturedStep(graph, inputs, targets, device_factors, factors)
        return self.graphs[key]

    def first_non_finite(self) -> tuple[int, str] | None:
        """The first replayed step since the last call whose losses or gradients were not finite, and which ("the
        losses" or "a gradient"), read with one device sync; None when all were finite."""
        if not self.pending_flags:
            return None
        steps = [step for step, _ in self.pending_flags]
        flags = torch.stack([flag for _, flag in self.pending_flags]).cpu()
        self.pending_flags.clear()
        for step, (losses_finite, gradients_finite) in zip(steps, flags.tolist()):
            if not (losses_finite and gradients_finite):
                return step, "the losses" if not losses_finite else "a gradient"
        return None

    def summary(self) -> dict:
        """For summary.json: whether graphs ran, why not when they did not, and how many steps each way."""
        return {"used": self.graphed_steps > 0, "fallback": self.fallback, "graphs": len(self.graphs),
                "graphed_steps": self.graphed_steps, "eager_steps": self.eager_steps}
