"""Optional TensorBoard logging (``trainer.tensorboard=true``; needs ``pip install -e ".[tensorboard]"``).

Writes the same numbers as the CSV/JSONL files into ``<run dir>/tensorboard``: per-step ``loss/<task>`` and
``weight/<task>``, and per-evaluation ``<split>/<task>/<metric>``. View with ``tensorboard --logdir outputs``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mtl_train.errors import ConfigError


class TensorBoardLogger:
    """Mirrors :class:`~mtl_train.engine.outputs.RunWriter`'s records into TensorBoard event files."""

    def __init__(self, log_dir: Path, loss_names: list[str], task_names: list[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "trainer.tensorboard=true needs the tensorboard package: pip install -e \".[tensorboard]\" "
                "(or set trainer.tensorboard=false)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.loss_names = loss_names
        self.task_names = task_names

    def log_steps(self, steps: list[int], losses: Tensor, weights: Tensor) -> None:
        for row, step in enumerate(steps):
            for column, name in enumerate(self.loss_names):
                self.writer.add_scalar(f"loss/{name}", losses[row, column].item(), step)
            for column, task in enumerate(self.task_names):
                self.writer.add_scalar(f"weight/{task}", weights[row, column].item(), step)

    def log_eval(self, step: int, split: str, metrics: dict[str, dict[str, float]]) -> None:
        for task, values in metrics.items():
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{task}/{name}", value, step)

    def close(self) -> None:
        self.writer.close()
