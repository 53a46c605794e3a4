"""Time one training step of every weighting method, side by side, and check the performance targets.

    python scripts/bench.py                       # k = 2, 4, 8; MultiLeNet and the ECG CNN; every method
    python scripts/bench.py --quick               # a smoke run, well under a minute
    python scripts/bench.py --tasks 4 --methods ew,mgda,pcgrad --setups lenet
    python scripts/bench.py --device cuda --amp bf16
    python scripts/bench.py --tasks 2 --setups lenet --methods ew --threads 1   # the data paths, side by side
    python scripts/bench.py --diagnostics --tasks 4 --threads 1   # the cost of diagnostics=... (only that)
    python scripts/bench.py --device cuda --graphs both --jacobians both --json bench.json   # the GPU targets

Set-ups (classification heads only, random inputs and labels held in memory):

* ``lenet``: Sener & Koltun's (NeurIPS 2018) MultiLeNet, ``configs/backbone/multi_lenet.yaml`` (Conv(1,10,5), pool,
  ReLU, Conv(10,20,5), Dropout2d, pool, ReLU, Linear(320,50), ReLU) with k heads
  ``configs/heads/multi_lenet_classification.yaml`` (Linear(50,50), ReLU, Dropout, Linear(50,10)), 28x28 inputs,
  batch 256;
* ``ecg``: the ECG CNN, ``configs/backbone/cnn1d.yaml`` (channels 16-32-64-64, kernel 7) with k
  ``configs/heads/classification.yaml`` heads (4 classes), 2,500-sample inputs, batch 64.

Every weighting method is built from its ``configs/weighting/*.yaml`` (gradient methods in each mode they offer)
and driven through the project's own step, ``Trainer.train_step(inputs, targets)``, on a fresh copy of the same
initial model and the same batch. Also timed, in the same interleaved loop:

* ``hand-written``: forward, sum of cross-entropies, backward, Adam step; plain PyTorch on the same model and batch;
* ``k backwards`` / ``jacobian <choice>``: the per-task gradients w.r.t. the shared parameters on one retained
  graph, by k sequential ``autograd.grad`` calls from the losses (the naive engine,
  ``mtl_train.weighting.gradients.task_gradient_matrix``) and by the project's engine (head backwards, then the
  trunk batched or looped); for k >= 4 also ``jacobian batched chunk c``, the batched trunk in chunks of at most c
  cotangents (``weighting.jacobian_chunk``), c = 1, 2 and k / 2;
* ``data``: cutting one batch from the in-memory training split (``Trainer._train_batches``).

``--graphs on`` (or ``both``) also times every method with CUDA graphs (``TrainerSettings(cuda_graphs=True)``,
rows marked ``graphs``; ``on``: graphed rows only, beside eager EW; ``both``: every row eager and graphed), and
``hand-written graphs``: the hand-written step captured whole in one CUDA graph, by the whole-network recipe of
PyTorch's CUDA-graphs notes (static input and targets, warm-up on a side stream, capturable Adam,
``torch.cuda.graph``, then per step: copy the batch in, replay). A trainer that falls back to eager steps says why
in the ``graphs fallback`` column. Off CUDA (or with a trainer without the setting) the graphs entries are skipped,
with a note. ``--jacobians both`` times every params-mode gradient method twice, with ``jacobian=batched`` and
``jacobian=loop`` (mode ``params/batched``, ``params/loop``).

On CUDA every entry's peak memory is reported too (``peak MiB``): in an untimed pass before the timings, the most
memory allocated during its first ``PEAK_STEPS`` steps beyond what was allocated when they began (its activations,
gradients, optimizer state and captured graphs; not the models and batches all entries hold). ``--json PATH``
writes every row, the other timings and the PASS/MISS lines as JSON.

Each repetition runs a window of ``--steps`` steps of every entry (after ``--warmup`` steps each), rotating the
order; a figure is the median over ``--repeats`` windows. Ratios are taken between medians of the same run.

Then the two data paths (``mtl_train.engine.batches``), side by side: EW trained on ``--data-steps`` batches of
uint8 inputs in a memory-mapped ``.npy`` file, standardised per channel, held in memory on the device
(``trainer.data_on_device=true``) and streamed by ``--workers`` DataLoader workers that prefetch
``--prefetch`` batches each (``trainer.data_on_device=false``). A window is one epoch from its start, through
``Trainer._train_batches`` and ``Trainer.train_step``, so the stream also pays for filling its pipeline; the data
share is the time spent waiting for the next batch over the window's time, the median over ``--repeats`` windows
of each path, alternating. The file was just written, so it is read from the page cache, not from the disk.

``--diagnostics`` times the per-run diagnostics (:mod:`mtl_train.diagnostics`) instead, in their worst case, every
step: EW (G computed by extra backwards) and PCGrad in each mode (G reused when the mode equals ``wrt``), each with
diagnostics off, the gradient statistics w.r.t. z (``rep``) and the shared parameters (``params``), and the
affinity (k lookahead forwards), with the ratio of each to the same method with diagnostics off.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mtl_train.cli import config_dir
from mtl_train.data.base import MultiTaskData, TensorSplit, mapped_tensor
from mtl_train.diagnostics.gradients import DiagnosticsSettings
from mtl_train.diagnostics.sampling import DiagnosticsSampler
from mtl_train.engine.acceleration import accelerate
from mtl_train.engine.device import resolve_amp, resolve_device
from mtl_train.engine.outputs import NullRunWriter
from mtl_train.engine.trainer import Trainer, TrainerSettings
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.model import MultiTaskModel
from mtl_train.schedules.joint import JointSchedule
from mtl_train.tasks import Task
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import Weighting
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.gradient_based import GradientWeighting
from mtl_train.weighting.gradients import TrunkJacobian, representation_gradients, task_gradient_matrix
from mtl_train.weighting.gradnorm import GradNorm

CONFIGS = Path(config_dir())
MIB = 2 ** 20
METHODS = sorted(p.stem for p in (CONFIGS / "weighting").glob("*.yaml"))


@dataclass(frozen=True)
class Setup:
    """A model and batch to time: backbone and head configs, input shape, classes, batch size."""

    name: str
    title: str
    backbone: str
    head: str
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int


SETUPS = {
    "lenet": Setup("MultiLeNet", "MultiLeNet (Sener & Koltun 2018), 28x28 inputs", "multi_lenet",
                   "multi_lenet_classification", (1, 28, 28), 10, 256),
    "ecg": Setup("ECG CNN", "ECG CNN (cnn1d), 2,500-sample inputs", "cnn1d", "classification", (1, 2500), 4, 64),
}
# Targets (checked here, never in timed tests).
EW_VS_HAND = 1.05
DATA_SHARE = 0.03
STREAMED_DATA_SHARE = 0.10
LOSS_BASED_VS_EW = 1.05
FAMO_VS_EW = 1.4
REP_VS_EW = 1.25
BATCHED_VS_LOOP = 0.6
# The GPU's own (``--device cuda``), beside EW_VS_HAND and BATCHED_VS_LOOP.
REP_VS_EW_CUDA = 1.15
GRAPHED_EW_VS_HAND = 0.5  # EW with CUDA graphs / the eager hand-written loop, MultiLeNet at batch 256
GRAPHED_EW_SETUP = ("MultiLeNet", 256)
PARAMS_VS_EW = 1.6  # every params-mode gradient method with the batched trunk
PEAK_MEMORY_K = 8  # the task count at which params mode's peak memory is reported beside EW's
#: Steps of each entry in the peak-memory pass: more than a graphed trainer's eager warm-up steps (3,
#: ``mtl_train.engine.cuda_graphs.WARMUP_STEPS``), so that its capture and a replay are inside the pass.
PEAK_STEPS = 5
#: ``--graphs``: whether each method runs eager (False) and with CUDA graphs (True).
GRAPHS_OPTIONS = {"off": (False,), "on": (True,), "both": (False, True)}
# Not loss-based in the sense of the target: they take per-task gradients, or extra head passes (mc_dropout).
NOT_LOSS_BASED = {"famo", "gradnorm", "mc_dropout"}
#: ``--diagnostics``: the methods (and modes) timed, and the diagnostics each runs with (every step).
DIAGNOSED_METHODS = (("ew", "-"), ("pcgrad", "rep"), ("pcgrad", "params"))
DIAGNOSTICS = {"off": None, "gradients rep": DiagnosticsSettings(every=1, wrt="rep"),
               "gradients params": DiagnosticsSettings(every=1, wrt="params"),
               "affinity": DiagnosticsSettings(affinity_every=1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="2,4,8", help="comma-separated task counts k")
    parser.add_argument("--methods", default="all", help="comma-separated configs/weighting names, or all")
    parser.add_argument("--setups", default="lenet,ecg", help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per entry (the median is reported)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per entry before the first window")
    parser.add_argument("--batch-size", type=int, default=None, help="override every set-up's batch size")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--amp", default="none", help="none | bf16 | fp16 (CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's); use 1 on a machine other jobs share: "
                             "OpenMP threads competing for busy cores can slow every step 20-fold")
    parser.add_argument("--channels-last", action="store_true",
                        help="apply mtl_train.engine.acceleration.accelerate(channels_last=True) to the model")
    parser.add_argument("--data-steps", type=int, default=20,
                        help="batches per epoch of the data-path comparison (one timed window each); 0 skips it")
    parser.add_argument("--workers", type=int, default=2, help="the streaming path's trainer.num_workers")
    parser.add_argument("--prefetch", type=int, default=2, help="the streaming path's trainer.prefetch_factor")
    parser.add_argument("--diagnostics", action="store_true",
                        help="time the per-run diagnostics (every step) against none, for EW and PCGrad, instead")
    parser.add_argument("--quick", action="store_true",
                        help="k = 2, MultiLeNet at batch 64, 2 windows of 2 steps (data paths: 4-step epochs): a "
                             "smoke run of every entry")
    parser.add_argument("--graphs", default="off", choices=GRAPHS_OPTIONS,
                        help="time the methods with CUDA graphs too (both), or instead, beside eager EW (on); "
                             "and the hand-written step captured in a graph (CUDA only)")
    parser.add_argument("--jacobians", default="default", choices=("default", "both"),
                        help="both: every params-mode gradient method with jacobian=batched and jacobian=loop")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write every row, the other timings and the PASS/MISS lines to PATH as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.setups, args.batch_size, args.repeats, args.steps, args.warmup = "2", "lenet", 64, 2, 2, 1
        args.data_steps = 4
    return args


def compose_weighting(name: str) -> DictConfig:
    """``configs/weighting/<name>.yaml`` as the CLI composes it (interpolations such as ``${seed}`` resolved)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return compose(config_name="train", overrides=[f"weighting={name}"]).weighting


@dataclass
class Row:
    """One timed training step: a method in one of its modes, eager or with CUDA graphs, and what was measured."""

    method: str
    mode: str  # "-", rep, params, or GradNorm's gradient_params
    jacobian: str | None = None  # the trunk backwards a params-mode step runs, batched | loop (None: none)
    jacobian_choice: str | None = None  # the jacobian set by --jacobians both (shown in the mode column)
    graphs: bool = False
    ms: float = float("nan")
    peak_mib: float | None = None
    fallback: str | None = None  # why a graphs row ran eager steps (the trainer's cuda_graph_fallback)

    @property
    def mode_label(self) -> str:
        return f"{self.mode}/{self.jacobian_choice}" if self.jacobian_choice else self.mode

    @property
    def label(self) -> str:
        """The entry's name in the timing loop, e.g. ``ew [-] graphs``."""
        return f"{self.method} [{self.mode_label}]" + (" graphs" if self.graphs else "")


def variants(name: str, tasks: list[str], jacobians: str = "default"
             ) -> list[tuple[str, str | None, Callable[[], Weighting]]]:
    """``(mode, jacobian, factory)`` for every way ``name`` runs: gradient methods in each mode they accept, and
    with ``jacobians="both"`` params mode with jacobian=batched and jacobian=loop (else jacobian None: the
    config's)."""
    cfg = compose_weighting(name)
    probe = instantiate(cfg, "weighting", task_names=tasks)
    if isinstance(probe, GradNorm):
        return [(probe.gradient_params, None, lambda: instantiate(cfg, "weighting", task_names=tasks))]
    if not isinstance(probe, GradientWeighting):
        return [("-", None, lambda: instantiate(cfg, "weighting", task_names=tasks))]
    modes = ["rep", "params"] if "mode" in cfg else ["params"]  # DB-MTL has no rep mode
    found = []
    for mode in modes:
        for choice in ("batched", "loop") if jacobians == "both" and mode == "params" else (None,):
            overrides = {"mode": mode, **({"jacobian": choice} if choice else {})}
            found.append((mode, choice, lambda overrides=overrides: instantiate(cfg, "weighting", task_names=tasks,
                                                                                **overrides)))
    return found


def trunk_backwards(weighting: Weighting, mode: str, device: torch.device) -> str | None:
    """How the step of ``weighting`` in ``mode`` runs its trunk backwards on ``device``: batched | loop (None: it
    takes no trunk Jacobian)."""
    jacobian = getattr(weighting, "trunk_jacobian", None)
    if jacobian is None or mode == "rep":
        return None
    return "batched" if jacobian.batches(device) else "loop"


def graphs_unavailable(device: torch.device) -> str | None:
    """Why CUDA-graph entries cannot be timed here; None when they can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run: {device.type})"
    if "cuda_graphs" not in {field.name for field in dataclasses.fields(TrainerSettings)}:
        return "this mtl_train's TrainerSettings has no cuda_graphs setting"
    return None


def build_model(setup: Setup, tasks: list[str]) -> MultiTaskModel:
    backbone = instantiate(OmegaConf.load(CONFIGS / "backbone" / f"{setup.backbone}.yaml"), "backbone",
                           task_names=tasks, in_channels=setup.input_shape[0], input_size=setup.input_shape[1:])
    head = OmegaConf.load(CONFIGS / "heads" / f"{setup.head}.yaml")
    heads = {t: instantiate(head, "heads", num_classes=setup.num_classes, in_channels=backbone.out_channels,
                            spatial_dims=backbone.spatial_dims) for t in tasks}
    return MultiTaskModel(backbone, heads)


def mapped_image_data(setup: Setup, tasks: list[str], rows: int, folder: Path) -> MultiTaskData:
    """``rows`` random uint8 inputs of the set-up's shape in a memory-mapped ``.npy`` file in ``folder``,
    standardised per channel (mean 127.5, std 73.9: uniform bytes) with every batch, and random labels; val and
    test are the first 8 rows."""
    path = folder / "inputs.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *setup.input_shape))
    out[:] = np.random.default_rng(0).integers(0, 256, size=out.shape, dtype=np.uint8)
    out.flush()
    del out
    channels = setup.input_shape[0]
    generator = torch.Generator().manual_seed(0)
    split = TensorSplit(mapped_tensor(np.load(path, mmap_mode="r")),
                        {t: torch.randint(0, setup.num_classes, (rows,), generator=generator) for t in tasks},
                        mean=torch.full((channels,), 127.5), std=torch.full((channels,), 73.9))
    few = split.select(torch.arange(8))
    return MultiTaskData(train=split, val=few, test=few)


def synthetic_data(setup: Setup, tasks: list[str], batch_size: int, batches: int = 4) -> MultiTaskData:
    n = batch_size * batches
    generator = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(n, *setup.input_shape, generator=generator),
                        {t: torch.randint(0, setup.num_classes, (n,), generator=generator) for t in tasks})
    return MultiTaskData(train=split, val=split.head(batch_size), test=split.head(batch_size))


class Bench:
    """Builds trainers and timed callables for one set-up and task count."""

    def __init__(self, setup: Setup, k: int, args: argparse.Namespace) -> None:
        self.setup, self.k = setup, k
        self.tasks = [f"t{i}" for i in range(k)]
        self.device = resolve_device(args.device)
        self.amp_dtype = resolve_amp(args.amp, self.device)
        self.batch_size = args.batch_size or setup.batch_size
        torch.manual_seed(0)
        self.template = accelerate(build_model(setup, self.tasks), channels_last=args.channels_last)
        self.data = synthetic_data(setup, self.tasks, self.batch_size)
        self.optimizer_cfg = OmegaConf.load(CONFIGS / "optimizer" / "adam.yaml")
        self.scheduler_cfg = OmegaConf.load(CONFIGS / "scheduler" / "none.yaml")
        self.trainers: list[Trainer] = []
        self.batch: tuple[Tensor, dict[str, Tensor]] | None = None

    def build_trainer(self, weighting: Weighting, data: MultiTaskData, settings: TrainerSettings) -> Trainer:
        """A trainer of a fresh copy of the initial model, with Adam and no scheduler."""
        model = copy.deepcopy(self.template).to(self.device)
        weighting = weighting.to(self.device)
        optimizer = instantiate(self.optimizer_cfg, "optimizer")(
            [{"params": list(model.parameters())}, *weighting.optimizer_groups()])
        return Trainer(
            model=model,
            tasks=[Task(t, t, CrossEntropy(), ClassificationMetrics(self.setup.num_classes)) for t in self.tasks],
            weighting=weighting,
            schedule=JointSchedule(self.tasks),
            optimizer=optimizer,
            scheduler=instantiate(self.scheduler_cfg.build, "scheduler.build")(optimizer),
            scheduler_interval=self.scheduler_cfg.interval,
            data=data,
            device=self.device,
            amp_dtype=self.amp_dtype,
            settings=settings,
            writer=NullRunWriter(Path("."), self.tasks),
            config={},
            seed=0,
        )

    def trainer(self, weighting: Weighting, graphs: bool = False) -> Trainer:
        """A trainer on the bench's data; ``graphs``: with ``cuda_graphs=True``."""
        settings = TrainerSettings(batch_size=self.batch_size, progress="none", checkpoint=False,
                                   **({"cuda_graphs": True} if graphs else {}))
        trainer = self.build_trainer(weighting, self.data, settings)
        if self.batch is None:  # the same batch for every entry
            inputs, targets, _ = next(trainer._train_batches())
            self.batch = (inputs, targets)
        self.trainers.append(trainer)
        return trainer

    def train_step(self, weighting: Weighting, graphs: bool = False) -> tuple[Trainer, Callable[[], object]]:
        """The trainer of ``weighting`` (``graphs``: with CUDA graphs) and one training step on the bench's batch."""
        trainer = self.trainer(weighting, graphs)
        return trainer, lambda: trainer.train_step(*self.batch)

    def diagnosed_step(self, weighting: Weighting, settings: DiagnosticsSettings | None) -> Callable[[], object]:
        """A training step with the diagnostics ``settings`` (None: off); the buffered rows are dropped after each
        step, as the trainer's flush would write them."""
        trainer = self.trainer(weighting)
        if settings is None:
            return lambda: trainer.train_step(*self.batch)
        trainer.diagnostics = DiagnosticsSampler(settings, trainer.model)

        def step() -> object:
            result = trainer.train_step(*self.batch)
            for rows in trainer.diagnostics.rows.values():
                rows.clear()
            return result

        return step

    def data_step(self) -> Callable[[], object]:
        """Cut the next batch from the training split (a new epoch's permutation when one ends)."""
        trainer = self.trainers[0]
        batches: Iterator = iter(())

        def cut() -> object:
            nonlocal batches
            batch = next(batches, None)
            if batch is None:
                batches = trainer._train_batches()
                batch = next(batches)
            return batch

        return cut

    def autocast(self, cache_enabled: bool = True):
        """Autocast to the run's amp dtype (none: nothing); ``cache_enabled=False`` under CUDA-graph capture."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache_enabled)

    def hand_written_step(self) -> Callable[[], object]:
        """Forward, sum of cross-entropies, backward, Adam step: plain PyTorch."""
        model = copy.deepcopy(self.template).to(self.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.optimizer_cfg.lr)
        inputs, targets = self.batch

        def step() -> object:
            with self.autocast():
                outputs = model(inputs)
            loss = sum(nn.functional.cross_entropy(outputs[t].float(), targets[t]) for t in self.tasks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

        return step

    def hand_written_graphed_step(self) -> Callable[[], object]:
        """The hand-written step captured whole in one CUDA graph, at the first call (PyTorch's CUDA-graphs notes,
        "whole network capture"): static input and targets, three warm-up steps on a side stream, Adam with
        ``capturable=True``, ``torch.cuda.graph``; each call then copies the batch into the static tensors and
        replays the graph."""
        model = copy.deepcopy(self.template).to(self.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.optimizer_cfg.lr, capturable=True)
        inputs, targets = self.batch
        static_inputs = inputs.clone()
        static_targets = {t: y.clone() for t, y in targets.items()}
        graph = torch.cuda.CUDAGraph()
        captured: list[Tensor] = []  # the graph's loss, once captured

        def forward_backward_step() -> Tensor:
            with self.autocast(cache_enabled=False):
                outputs = model(static_inputs)
            loss = sum(nn.functional.cross_entropy(outputs[t].float(), static_targets[t]) for t in self.tasks)
            loss.backward()
            optimizer.step()
            return loss

        def capture() -> Tensor:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    optimizer.zero_grad(set_to_none=True)
                    forward_backward_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates .grad from the graph's pool
            with torch.cuda.graph(graph):
                return forward_backward_step()

        def step() -> object:
            if not captured:
                captured.append(capture())
            static_inputs.copy_(inputs)
            for t in self.tasks:
                static_targets[t].copy_(targets[t])
            graph.replay()
            return captured[0]

        return step

    def jacobians(self) -> dict[str, Callable[[], object]]:
        """The per-task gradients w.r.t. the shared parameters on one retained graph: k sequential backwards from
        the losses, and the engine with the trunk batched and looped, and for k >= 4 batched in chunks of 1, 2 and
        k / 2 cotangents."""
        model = copy.deepcopy(self.template).to(self.device).train()
        inputs, targets = self.batch
        with self.autocast():
            z = model.encode(inputs)
            outputs = model.decode(z, inputs)
        losses = torch.stack([nn.functional.cross_entropy(outputs[t].float(), targets[t]) for t in self.tasks])
        shared = model.shared_parameters()
        none = [[] for _ in self.tasks]

        def engine(jacobian: TrunkJacobian) -> Callable[[], object]:
            return lambda: jacobian(z, shared, representation_gradients(losses, z, none)[0])

        chunks = sorted({1, 2, self.k // 2}) if self.k >= 4 else []
        return {"k backwards": lambda: task_gradient_matrix(losses, shared),
                "jacobian batched": engine(TrunkJacobian("batched")),
                "jacobian loop": engine(TrunkJacobian("loop")),
                **{f"jacobian batched chunk {c}": engine(TrunkJacobian("batched", c)) for c in chunks}}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(entries: dict[str, Callable[[], object]], args: argparse.Namespace, device: torch.device
            ) -> dict[str, float]:
    """Median ms per call of every entry, over ``args.repeats`` interleaved windows of ``args.steps`` calls."""
    names = list(entries)
    for name in names:
        for _ in range(args.warmup):
            entries[name]()
    windows: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                entries[name]()
            synchronize(device)
            windows[name].append((time.perf_counter() - start) / args.steps * 1e3)
    return {name: statistics.median(times) for name, times in windows.items()}


def peak_memory(entries: dict[str, Callable[[], object]], args: argparse.Namespace, device: torch.device
                ) -> dict[str, float | None]:
    """MiB per entry, on CUDA (None elsewhere): the most memory allocated during its first ``args.warmup`` calls
    (at least :data:`PEAK_STEPS`) beyond what was allocated when they began; one untimed pass, entry after entry."""
    if device.type != "cuda":
        return {name: None for name in entries}
    peaks = {}
    for name, entry in entries.items():
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(max(args.warmup, PEAK_STEPS)):
            entry()
        synchronize(device)
        peaks[name] = (torch.cuda.max_memory_allocated(device) - before) / MIB
    return peaks


def data_window(trainer: Trainer, device: torch.device) -> tuple[float, float]:
    """Train one epoch from its start; return ms per step and the share of the time spent waiting for batches."""
    trainer.batch_in_epoch = 0
    waited, steps = 0.0, 0
    synchronize(device)
    start = time.perf_counter()
    batches = trainer._train_batches()
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        trainer.train_step(*batch)
        steps += 1
    synchronize(device)
    total = time.perf_counter() - start
    return total / steps * 1e3, waited / total


def data_paths(setup: Setup, k: int, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Median ms per step and data share of EW on each data path (module docstring), after one warm-up epoch
    each; the path measured first alternates."""
    bench = Bench(setup, k, args)
    common = {"batch_size": bench.batch_size, "progress": "none", "checkpoint": False}
    with tempfile.TemporaryDirectory() as folder:
        data = mapped_image_data(setup, bench.tasks, bench.batch_size * args.data_steps, Path(folder))
        settings = {
            f"in memory on {bench.device}": TrainerSettings(**common, data_on_device=True),
            (f"streamed: {args.workers} workers x prefetch {args.prefetch}" if args.workers else
             "streamed: gathered in the training process (0 workers)"): TrainerSettings(
                **common, data_on_device=False, num_workers=args.workers, prefetch_factor=args.prefetch),
        }
        trainers = {name: bench.build_trainer(EqualWeighting(bench.tasks), data, path)
                    for name, path in settings.items()}
        names = list(trainers)
        windows: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for name in names:
            data_window(trainers[name], bench.device)
        for repeat in range(args.repeats):
            for name in names[repeat % 2:] + names[:repeat % 2]:
                windows[name].append(data_window(trainers[name], bench.device))
        for trainer in trainers.values():
            trainer.close_loaders()
    return {name: (statistics.median(ms for ms, _ in times), statistics.median(share for _, share in times))
            for name, times in windows.items()}


def report_data_paths(setup: Setup, k: int, paths: dict[str, tuple[float, float]]) -> list[str]:
    """Print the data-path table; return the streamed path's PASS/MISS line."""
    print("\n| data path (EW, uint8 memory map standardised per batch) | k | ms/step | waiting for data, ms/step "
          "| data share of the step |\n|---|---|---|---|---|")
    for name, (ms, share) in paths.items():
        print(f"| {name} | {k} | {ms:.1f} | {ms * share:.2f} | {share:.1%} |")
    name, (_, share) = list(paths.items())[-1]
    return [f"{verdict(share < STREAMED_DATA_SHARE)} {setup.name}, k={k}: data share of the step, {name} = "
            f"{share:.1%} (target < {STREAMED_DATA_SHARE:.0%})"]


@dataclass
class Results:
    """The timings of one set-up and task count: the method rows, the other entries' ms and peak MiB (None off
    CUDA), and each method's kind (gradient | loss | other)."""

    setup: Setup
    batch_size: int
    k: int
    rows: list[Row]
    others: dict[str, float]
    other_peaks: dict[str, float | None]
    kinds: dict[str, str]


def run(setup: Setup, k: int, methods: list[str], args: argparse.Namespace) -> Results:
    """Time every method's step (each variant, eager and/or with CUDA graphs per ``--graphs``) and the other
    entries for one set-up and k; peak memory first, in its own untimed pass (CUDA)."""
    bench = Bench(setup, k, args)
    graph_options = (False,) if graphs_unavailable(bench.device) else GRAPHS_OPTIONS[args.graphs]
    rows, steps, trainers, kinds = [], {}, {}, {}
    for name in methods:
        for mode, choice, factory in variants(name, bench.tasks, args.jacobians):
            for graphs in sorted({False, *graph_options}) if name == "ew" else graph_options:  # eager EW: the unit
                weighting = factory()
                kinds[name] = ("gradient" if isinstance(weighting, GradientWeighting) else
                               "other" if name in NOT_LOSS_BASED else "loss")
                row = Row(name, mode, jacobian_choice=choice, graphs=graphs)
                trainers[row.label], steps[row.label] = bench.train_step(weighting, graphs)
                rows.append(row)
    others = {"hand-written": bench.hand_written_step()}
    if True in graph_options:
        others["hand-written graphs"] = bench.hand_written_graphed_step()
    others.update({"data": bench.data_step(), **bench.jacobians()})
    entries = {**steps, **others}
    peaks = peak_memory(entries, args, bench.device)
    times = measure(entries, args, bench.device)
    for row in rows:
        trainer = trainers[row.label]
        row.ms, row.peak_mib = times[row.label], peaks[row.label]
        row.jacobian = trunk_backwards(trainer.weighting, row.mode, bench.device)
        row.fallback = getattr(trainer, "cuda_graph_fallback", None) if row.graphs else None
    return Results(setup, bench.batch_size, k, rows, {name: times[name] for name in others},
                   {name: peaks[name] for name in others}, kinds)


def diagnostics_costs(setup: Setup, k: int, args: argparse.Namespace) -> None:
    """Time and print :data:`DIAGNOSED_METHODS` under each of :data:`DIAGNOSTICS`, with the ratios to off."""
    bench = Bench(setup, k, args)
    entries = {}
    for name, mode in DIAGNOSED_METHODS:
        cfg = compose_weighting(name)
        for label, settings in DIAGNOSTICS.items():
            weighting = instantiate(cfg, "weighting", task_names=bench.tasks, **({} if mode == "-" else {"mode": mode}))
            entries[(name, mode, label)] = bench.diagnosed_step(weighting, settings)
    times = measure({f"{name} [{mode}] {label}": fn for (name, mode, label), fn in entries.items()}, args, bench.device)
    print("\n| method | k | mode | diagnostics (every step) | ms/step | ratio to off |\n|---|---|---|---|---|---|")
    for name, mode, label in entries:
        ms, off = times[f"{name} [{mode}] {label}"], times[f"{name} [{mode}] off"]
        print(f"| {name} | {k} | {mode} | {label} | {ms:.1f} | {ms / off:.2f} |")


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def ew_row(rows: list[Row]) -> Row | None:
    """The eager EW row, the unit of the ratios (None when EW was not timed)."""
    return next((row for row in rows if row.method == "ew" and not row.graphs), None)


def table_line(cells: list[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_tables(result: Results) -> None:
    """Print the markdown tables of one set-up and k: the methods and the other entries (with ``peak MiB`` on
    CUDA and ``graphs fallback`` when graphs rows were timed), then the per-task gradients."""
    k, rows, others = result.k, result.rows, result.others
    ew = ew_row(rows)
    peaks = any(row.peak_mib is not None for row in rows)
    graphs = any(row.graphs for row in rows)
    extra = ["peak MiB"] * peaks + ["graphs fallback"] * graphs
    header = ["method", "k", "mode", "ms/step", "ratio to EW", *extra]
    print("\n" + table_line(header) + "\n|" + "---|" * len(header))
    for row in rows:
        ratio = f"{row.ms / ew.ms:.2f}" if ew else "-"
        fallback = [(row.fallback or "-") if row.graphs else ""] * graphs
        print(table_line([f"{row.method} graphs" if row.graphs else row.method, k, row.mode_label, f"{row.ms:.1f}",
                          ratio, *[mib(row.peak_mib)] * peaks, *fallback]))
    for name in ("hand-written", "hand-written graphs", "data"):
        if name in others:
            ratio = f"{others[name] / ew.ms:.3f}" if ew else "-"
            print(table_line([f"_{name}_", k, "-", f"{others[name]:.2f}", ratio,
                              *[mib(result.other_peaks[name])] * peaks, *[""] * graphs]))
    jacobians = {name: ms for name, ms in others.items() if name.startswith(("jacobian", "k backwards"))}
    header = ["per-task gradients (shared params, one graph)", "k", "ms", "ratio to k backwards", *["peak MiB"] * peaks]
    print("\n" + table_line(header) + "\n|" + "---|" * len(header))
    for name, ms in jacobians.items():
        print(table_line([name, k, f"{ms:.1f}", f"{ms / others['k backwards']:.2f}",
                          *[mib(result.other_peaks[name])] * peaks]))


def target_lines(result: Results, device_type: str) -> list[str]:
    """The PASS/MISS lines of one set-up and k (and, on CUDA at k = 8, one INFO line of peak memory); the thresholds
    of ``device_type``'s targets."""
    setup, k, others, kinds = result.setup, result.k, result.others, result.kinds
    eager = [row for row in result.rows if not row.graphs]
    tag = f"{setup.name}, k={k}"
    ew = ew_row(eager)
    if ew is None:
        return [f"{tag}: EW not measured, no targets checked"]
    lines = []
    hand = ew.ms / others["hand-written"]
    lines.append(f"{verdict(hand <= EW_VS_HAND)} {tag}: EW / hand-written loop = {hand:.3f} (target <= {EW_VS_HAND})")
    share = others["data"] / ew.ms
    lines.append(f"{verdict(share < DATA_SHARE)} {tag}: data time / EW step = {share:.2%} (target < {DATA_SHARE:.0%})")
    loss_based = [(row.method, row.ms / ew.ms) for row in eager if kinds[row.method] == "loss" and row.method != "ew"]
    if loss_based:
        worst = max(loss_based, key=lambda item: item[1])
        lines.append(f"{verdict(worst[1] <= LOSS_BASED_VS_EW)} {tag}: slowest loss-based method {worst[0]} = "
                     f"{worst[1]:.3f} x EW (target <= {LOSS_BASED_VS_EW})")
    famo = [row.ms / ew.ms for row in eager if row.method == "famo"]
    if famo:
        lines.append(f"{verdict(famo[0] <= FAMO_VS_EW)} {tag}: FAMO = {famo[0]:.3f} x EW (target <= {FAMO_VS_EW})")
    if k == 4:
        lines += k4_lines(tag, ew, eager, others, kinds, device_type)
    graphed_ew = next((row for row in result.rows if row.method == "ew" and row.graphs), None)
    if graphed_ew is not None and (setup.name, result.batch_size) == GRAPHED_EW_SETUP:
        ratio = graphed_ew.ms / others["hand-written"]
        fallback = f"; the trainer ran eager steps: {graphed_ew.fallback}" if graphed_ew.fallback else ""
        lines.append(f"{verdict(ratio <= GRAPHED_EW_VS_HAND)} {tag}: EW with CUDA graphs / hand-written loop (eager) = "
                     f"{ratio:.3f} (target <= {GRAPHED_EW_VS_HAND}){fallback}")
    if k == PEAK_MEMORY_K and ew.peak_mib is not None:
        lines += peak_lines(tag, ew, eager, kinds)
    return lines


def k4_lines(tag: str, ew: Row, eager: list[Row], others: dict[str, float], kinds: dict[str, str],
             device_type: str) -> list[str]:
    """The k = 4 targets: gradient methods in rep mode against EW, the engine's trunk against k backwards, and on
    CUDA params mode with the batched trunk against EW."""
    lines = []
    rep_target = REP_VS_EW_CUDA if device_type == "cuda" else REP_VS_EW
    rep = [(row.method, row.ms / ew.ms) for row in eager if kinds[row.method] == "gradient" and row.mode == "rep"]
    if rep:
        worst = max(rep, key=lambda item: item[1])
        lines.append(f"{verdict(worst[1] <= rep_target)} {tag}: slowest gradient method in rep mode {worst[0]} = "
                     f"{worst[1]:.3f} x EW (target <= {rep_target})")
    auto = "batched" if TrunkJacobian("auto").batches(torch.device(device_type)) else "loop"
    for choice in ("batched", "loop"):
        ratio = others[f"jacobian {choice}"] / others["k backwards"]
        used = f", what jacobian=auto uses on {device_type}" if choice == auto else ""
        lines.append(f"{verdict(ratio <= BATCHED_VS_LOOP)} {tag}: params-mode Jacobian, trunk {choice}{used} = "
                     f"{ratio:.3f} x k sequential backwards (target <= {BATCHED_VS_LOOP})")
    params = [(row, row.ms / ew.ms) for row in batched_params_rows(eager, kinds)]
    if params and device_type == "cuda":
        row, ratio = max(params, key=lambda item: item[1])
        lines.append(f"{verdict(ratio <= PARAMS_VS_EW)} {tag}: slowest gradient method in params mode with the batched "
                     f"trunk {row.method} = {ratio:.3f} x EW (target <= {PARAMS_VS_EW})")
    return lines


def batched_params_rows(rows: list[Row], kinds: dict[str, str]) -> list[Row]:
    """The rows of gradient methods in params mode whose trunk backwards ran batched."""
    return [row for row in rows if kinds[row.method] == "gradient" and row.mode == "params"
            and row.jacobian == "batched"]


def peak_lines(tag: str, ew: Row, eager: list[Row], kinds: dict[str, str]) -> list[str]:
    """One INFO line: the peak memory of params mode with the batched trunk (the largest) beside EW's."""
    params = [row for row in batched_params_rows(eager, kinds) if row.peak_mib is not None]
    if not params:
        return [f"INFO {tag}: peak GPU memory of a step, EW = {ew.peak_mib:.1f} MiB (no params-mode row with the "
                f"batched trunk)"]
    largest = max(params, key=lambda row: row.peak_mib)
    ratio = f", {largest.peak_mib / ew.peak_mib:.2f} x EW" if ew.peak_mib > 0 else ""
    return [f"INFO {tag}: peak GPU memory of a step, EW = {ew.peak_mib:.1f} MiB; params mode with the batched trunk "
            f"up to {largest.peak_mib:.1f} MiB ({largest.method}{ratio})"]


def json_records(result: Results) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(rows, others)`` of one set-up and k as JSON objects (ratios to eager EW; null where not measured)."""
    ew = ew_row(result.rows)
    where = {"setup": result.setup.name, "batch_size": result.batch_size, "k": result.k}

    def ratio(ms: float) -> float | None:
        return ms / ew.ms if ew else None

    rows = [{**where, "method": row.method, "mode": row.mode, "jacobian": row.jacobian, "graphs": row.graphs,
             "ms": row.ms, "ratio_to_ew": ratio(row.ms), "peak_mib": row.peak_mib, "fallback": row.fallback}
            for row in result.rows]
    others = [{**where, "name": name, "ms": ms, "ratio_to_ew": ratio(ms), "peak_mib": result.other_peaks[name]}
              for name, ms in result.others.items()]
    return rows, others


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = METHODS if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    device = resolve_device(args.device)
    print(f"# mtl-train step timings: device {device}, amp {args.amp}, channels-last {args.channels_last}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} windows of "
          f"{args.steps} steps after {args.warmup} warm-up steps")
    no_graphs = graphs_unavailable(device) if args.graphs != "off" else None
    if no_graphs:
        print(f"\nnote: {no_graphs}; the CUDA-graphs entries are skipped (--graphs {args.graphs})")
    record: dict[str, Any] = {"device": str(device), "amp": args.amp, "channels_last": args.channels_last,
                              "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
                              "graphs": args.graphs, "graphs_skipped": no_graphs, "jacobians": args.jacobians,
                              "rows": [], "others": [], "data_paths": [], "verdicts": []}
    verdicts = record["verdicts"]
    for setup_name in args.setups.split(","):
        setup = SETUPS[setup_name]
        print(f"\n## {setup.title}, batch {args.batch_size or setup.batch_size}")
        for k in map(int, args.tasks.split(",")):
            if args.diagnostics:
                diagnostics_costs(setup, k, args)
                continue
            result = run(setup, k, methods, args)
            print_tables(result)
            verdicts += target_lines(result, device.type)
            rows, others = json_records(result)
            record["rows"] += rows
            record["others"] += others
            if args.data_steps:
                paths = data_paths(setup, k, args)
                verdicts += report_data_paths(setup, k, paths)
                record["data_paths"] += [{"setup": setup.name, "k": k, "path": name, "ms": ms, "data_share": share}
                                         for name, (ms, share) in paths.items()]
    print("\n## Targets\n")
    for line in verdicts:
        print(line)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
