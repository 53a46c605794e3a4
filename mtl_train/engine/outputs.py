"""The files every run writes into its output directory.

- ``losses.csv`` / ``weights.csv``: one row per training step, columns ``step`` + one per task (``losses.csv`` also
  has a column for the backbone's penalty, e.g. soft sharing's ``soft_l2``, when there is one);
- ``metrics.jsonl``: one JSON object per evaluation (step, epoch, split, per-task metrics);
- ``summary.json`` (final and best metrics, config digest, wall time, device), written atomically;
- ``checkpoints/last.pt``, written atomically (see :mod:`mtl_train.utils.io`);
- optionally ``tensorboard/`` event files with the same numbers (:mod:`mtl_train.engine.tensorboard`).

CSV and JSONL files are append-only and flushed on every write, so an interrupted run keeps every row
written before the interruption. A resumed run (``trainer.resume``) starts its files from the rows of the run it
continues up to the checkpoint's step, so they read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtl_train.engine.tensorboard import TensorBoardLogger
from mtl_train.errors import ConfigError
from mtl_train.utils.io import save_torch, write_json


class RunWriter:
    """Appends per-step and per-evaluation records to the run's files."""

    def __init__(
        self,
        output_dir: Path,
        task_names: list[str],
        penalty_names: list[str] = (),
        tensorboard: bool = False,
        resume_from: tuple[Path, int] | None = None,
    ) -> None:
        """``resume_from=(run_dir, step)`` starts every file with that run's records up to ``step`` (inclusive)."""
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.task_names = task_names
        self.loss_names = loss_names = [*task_names, *penalty_names]
        self._csv_files = {}
        self._csv_writers = {}
        for name, columns in (("losses", loss_names), ("weights", task_names)):
            header = ["step", *columns]
            kept = kept_csv_rows(resume_from[0] / f"{name}.csv", header, resume_from[1]) if resume_from else []
            file = open(self.output_dir / f"{name}.csv", "w", newline="")
            writer = csv.writer(file)
            writer.writerows([header, *kept])
            file.flush()
            self._csv_files[name] = file
            self._csv_writers[name] = writer
        kept_records = kept_eval_records(resume_from[0] / "metrics.jsonl", resume_from[1]) if resume_from else []
        self._metrics_file = open(self.output_dir / "metrics.jsonl", "w")
        self._metrics_file.writelines(kept_records)
        self._metrics_file.flush()
        self._tensorboard = TensorBoardLogger(self.output_dir / "tensorboard", loss_names, task_names) if tensorboard else None

    def log_steps(self, steps: list[int], losses: Tensor, weights: Tensor) -> None:
        """Append rows for ``steps``; ``losses``/``weights`` are CPU tensors with one row per step and one column per
        loss (tasks, then penalties) / task."""
        for name, values in (("losses", losses), ("weights", weights)):
            rows = values.tolist()
            self._csv_writers[name].writerows([[step, *(f"{v:.6g}" for v in row)] for step, row in zip(steps, rows)])
            self._csv_files[name].flush()
        if self._tensorboard is not None:
            self._tensorboard.log_steps(steps, losses, weights)

    def log_eval(self, step: int, epoch: int, split: str, metrics: dict[str, dict[str, float]]) -> None:
        record = {"step": step, "epoch": epoch, "split": split, "metrics": metrics}
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._tensorboard is not None:
            self._tensorboard.log_eval(step, split, metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.output_dir / "summary.json", summary)

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        path = self.output_dir / "checkpoints" / "last.pt"
        save_torch(path, state)
        return path

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

    def log_steps(self, steps: list[int], losses: Tensor, weights: Tensor) -> None:
        pass

    def log_eval(self, step: int, epoch: int, split: str, metrics: dict[str, dict[str, float]]) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        return self.output_dir / "checkpoints" / "last.pt"

    def close(self) -> None:
        pass
