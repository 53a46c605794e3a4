"""The files every run writes into its output directory.

- ``losses.csv`` / ``weights.csv``: one row per training step, columns ``step`` + one per task (``losses.csv`` also
  has a column for the backbone's penalty, e.g. soft sharing's ``soft_l2``, when there is one);
- ``gradients.csv`` / ``affinity.csv`` (``diagnostics=...``): one row per sample of the per-run diagnostics
  (:mod:`mtl_train.diagnostics`), written at the same flushes;
- ``metrics.jsonl``: one JSON object per evaluation (step, epoch, split, per-task metrics);
- ``summary.json`` (final and best metrics, config digest, wall time, device), written atomically;
- ``checkpoints/last.pt``, written atomically (see :mod:`mtl_train.utils.io`), with the run's wall time so far
  (``wall_time_s``, :class:`WallClock`);
- ``checkpoints/best.pt``, the model ``trainer.model_selection=best_val`` selected, also written atomically;
- optionally ``tensorboard/`` event files with the same numbers (:mod:`mtl_train.engine.tensorboard`).

Constructing a :class:`RunWriter` touches no file: :meth:`RunWriter.open` creates them, once every check of the
run has passed (so a run that fails while it is set up leaves an earlier run in its directory as it was). CSV and
JSONL files are append-only and flushed on every write, so an interrupted run keeps every row written before the
interruption. A resumed run (``trainer.resume``) starts its files from the rows of the run it continues up to the
checkpoint's step, so they read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtl_train.engine.tensorboard import TensorBoardLogger
from mtl_train.errors import ConfigError
from mtl_train.utils.io import atomic_write, save_torch, write_json


@dataclass(frozen=True)
class WallClock:
    """The wall time of a run that may span several processes (``trainer.resume``).

    ``start`` is this part's start (a ``time.perf_counter()`` value); ``before_s`` is the time of the parts before
    it, up to the checkpoint this part continues from (time after that checkpoint was lost with its rows).
    """

    start: float
    before_s: float = 0.0

    def this_part_s(self) -> float:
        return time.perf_counter() - self.start

    def total_s(self) -> float:
        return self.before_s + self.this_part_s()


class RunWriter:
    """Appends per-step and per-evaluation records to the run's files (after :meth:`open`)."""

    def __init__(
        self,
        output_dir: Path,
        task_names: list[str],
        penalty_names: list[str] = (),
        tensorboard: bool = False,
        resume_from: tuple[Path, int] | None = None,
        clock: WallClock | None = None,
        step_files: dict[str, list[str]] | None = None,
    ) -> None:
        """``resume_from=(run_dir, step)`` starts every file with that run's records up to ``step`` (inclusive),
        read (and checked) here; ``clock`` gives the wall time stamped into each checkpoint (from now when None);
        ``step_files`` are further per-step CSV files (name without ``.csv`` -> header, e.g. the diagnostics'),
        written by :meth:`log_rows`. Writes nothing: :meth:`open` does."""
        self.output_dir = Path(output_dir)
        self.task_names = task_names
        self.loss_names = [*task_names, *penalty_names]
        self.tensorboard = tensorboard
        self.clock = clock or WallClock(time.perf_counter())
        self._headers = {"losses": ["step", *self.loss_names], "weights": ["step", *task_names], **(step_files or {})}
        for name in step_files or {}:
            if resume_from and not (resume_from[0] / f"{name}.csv").is_file():
                raise ConfigError(f"trainer.resume: {resume_from[0]} has no {name}.csv (it was run with other "
                                  "diagnostics); resume with the diagnostics=... it was started with")
        self._kept_rows = {name: kept_csv_rows(resume_from[0] / f"{name}.csv", header, resume_from[1])
                           if resume_from else [] for name, header in self._headers.items()}
        self._kept_records = kept_eval_records(resume_from[0] / "metrics.jsonl", resume_from[1]) if resume_from else []

    def open(self) -> None:
        """Create the run's files (replacing any there), starting them with the resumed run's records."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._csv_files = {}
        self._csv_writers = {}
        for name, header in self._headers.items():
            file = open(self.output_dir / f"{name}.csv", "w", newline="")
            writer = csv.writer(file)
            writer.writerows([header, *self._kept_rows[name]])
            file.flush()
            self._csv_files[name] = file
            self._csv_writers[name] = writer
        self._metrics_file = open(self.output_dir / "metrics.jsonl", "w")
        self._metrics_file.writelines(self._kept_records)
        self._metrics_file.flush()
        self._tensorboard = (TensorBoardLogger(self.output_dir / "tensorboard", self.loss_names, self.task_names)
                             if self.tensorboard else None)

    def log_steps(self, steps: list[int], losses: Tensor, weights: Tensor) -> None:
        """Append rows for ``steps``; ``losses``/``weights`` are CPU tensors with one row per step and one column per
        loss (tasks, then penalties) / task."""
        for name, values in (("losses", losses), ("weights", weights)):
            self.log_rows(name, steps, values)
        if self._tensorboard is not None:
            self._tensorboard.log_steps(steps, losses, weights)

    def log_rows(self, name: str, steps: list[int], values: Tensor) -> None:
        """Append rows for ``steps`` to the step file ``name`` (``step_files``); ``values`` is a CPU tensor with one
        row per step."""
        rows = values.tolist()
        self._csv_writers[name].writerows([[step, *(f"{v:.6g}" for v in row)] for step, row in zip(steps, rows)])
        self._csv_files[name].flush()

    def log_eval(self, step: int, epoch: int, split: str, metrics: dict[str, dict[str, float]]) -> None:
        record = {"step": step, "epoch": epoch, "split": split, "metrics": metrics}
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._tensorboard is not None:
            self._tensorboard.log_eval(step, split, metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.output_dir / "summary.json", summary)

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``state`` plus the run's wall time so far (``wall_time_s``) to ``checkpoints/last.pt``."""
        path = self.output_dir / "checkpoints" / "last.pt"
        save_torch(path, {**state, "wall_time_s": self.clock.total_s()})
        return path

    def save_best_model(self, state: dict[str, Any]) -> Path:
        """``checkpoints/best.pt``: the model ``trainer.model_selection=best_val`` selected, written atomically."""
        path = self.output_dir / "checkpoints" / "best.pt"
        save_torch(path, state)
        return path

    def copy_best_model(self, run_dir: Path) -> None:
        """Start with the ``checkpoints/best.pt`` of the run this one resumes (when it is another directory)."""
        source, target = run_dir / "checkpoints" / "best.pt", self.output_dir / "checkpoints" / "best.pt"
        if source.is_file() and source.resolve() != target.resolve():
            atomic_write(target, lambda file: file.write(source.read_bytes()))

    def close(self) -> None:
        for file in (*self._csv_files.values(), self._metrics_file):
            file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def kept_csv_rows(path: Path, header: list[str], step: int) -> list[list[str]]:
    """The rows of a resumed run's ``losses.csv``/``weights.csv`` up to ``step``; its header must be ``header``."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    if not rows or rows[0] != header:
        raise ConfigError(
            f"trainer.resume: {path} has columns {rows[0] if rows else []}, this run writes {header}; resume with the "
            "task set the run was started with"
        )
    return [row for row in rows[1:] if int(row[0]) <= step]


def kept_eval_records(path: Path, step: int) -> list[str]:
    """The lines of a resumed run's ``metrics.jsonl`` up to ``step``, without the final test record."""
    with open(path) as file:
        records = [(line, json.loads(line)) for line in file if line.strip()]
    return [line for line, record in records if record["step"] <= step and record["split"] != "test"]


def read_step_csv(path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Read a ``losses.csv``/``weights.csv``: (task names, steps (n,), values (n, k))."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    header, body = rows[0], rows[1:]
    steps = torch.tensor([int(r[0]) for r in body], dtype=torch.long)
    values = torch.tensor([[float(v) for v in r[1:]] for r in body], dtype=torch.float64).reshape(len(body), len(header) - 1)
    return header[1:], steps, values


class NullRunWriter(RunWriter):
    """The writer of ranks other than 0 under torchrun: same interface, writes nothing (rank 0 writes the run)."""

    def __init__(self, output_dir: Path, task_names: list[str], penalty_names: list[str] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.task_names = task_names
        self.loss_names = [*task_names, *penalty_names]

    def open(self) -> None:
        pass

    def log_steps(self, steps: list[int], losses: Tensor, weights: Tensor) -> None:
        pass

    def log_rows(self, name: str, steps: list[int], values: Tensor) -> None:
        pass

    def log_eval(self, step: int, epoch: int, split: str, metrics: dict[str, dict[str, float]]) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        return self.output_dir / "checkpoints" / "last.pt"

    def save_best_model(self, state: dict[str, Any]) -> Path:
        return self.output_dir / "checkpoints" / "best.pt"

    def copy_best_model(self, run_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass
