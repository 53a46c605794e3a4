"""Training progress: a live rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mtl_train.errors import ConfigError

MODES = ("auto", "rich", "plain", "none")


def format_tasks(task_names: list[str], losses: list[float], weights: list[float]) -> str:
    """``cls 0.512 (w 1.00) | rec 0.031 (w 0.10)``."""
    return " | ".join(f"{t} {loss:.4g} (w {w:.3g})" for t, loss, w in zip(task_names, losses, weights))


class TrainingProgress:
    """Shows the step count with the latest per-task loss and weight.

    ``mode``: ``rich`` (live bar), ``plain`` (a line every ``plain_every`` steps and at every message),
    ``none`` (messages only), ``auto`` (rich on a terminal, plain otherwise).
    """

    def __init__(self, mode: str, total_steps: int, task_names: list[str], console: Console | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"trainer.progress must be one of {', '.join(MODES)}, got {mode!r}")
        self.console = console or Console()
        if mode == "auto":
            mode = "rich" if self.console.is_terminal else "plain"
        self.mode = mode
        self.total_steps = total_steps
        self.task_names = task_names
        self.plain_every = max(1, total_steps // 20)
        self._last_plain_step = 0
        self._progress: Progress | None = None
        self._bar = None

    def __enter__(self) -> TrainingProgress:
        if self.mode == "rich":
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                TextColumn("{task.description}"), console=self.console,
            )
            self._progress.start()
            self._bar = self._progress.add_task("", total=self.total_steps)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, losses: list[float], weights: list[float]) -> None:
        """Report that ``step`` steps are done, with the latest per-task losses and weights."""
        text = format_tasks(self.task_names, losses, weights)
        if self._progress is not None:
            self._progress.update(self._bar, completed=step, description=text)
        elif self.mode == "plain" and (step - self._last_plain_step >= self.plain_every or step == self.total_steps):
            self._last_plain_step = step
            self.console.print(f"step {step}/{self.total_steps}  {text}", highlight=False)

    def message(self, text: str) -> None:
        """A line above the bar (evaluation results, epoch ends)."""
        self.console.print(text, highlight=False)
