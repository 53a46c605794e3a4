"""Stops by SIGINT (Ctrl-C) and SIGTERM (``kill``, SLURM pre-emption), before and during training.

While a run is set up (data, model, checkpoint), inside :class:`SetupSignals`, either signal stops it at once with
:class:`~mtl_train.errors.TrainingInterrupted`: there is nothing to save yet, so its message says to run again.

During training, inside :class:`StopSignals`, the first such signal only sets :attr:`StopSignals.signum`; the
training loop checks it after every step, saves a checkpoint and raises
:class:`~mtl_train.errors.TrainingInterrupted`. A second signal interrupts at once (``KeyboardInterrupt``), for a
user who really wants out.
"""

from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from types import FrameType, TracebackType
from typing import Self

from mtl_train.errors import TrainingInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _SignalHandlers(ABC):
    """Context manager that routes SIGINT/SIGTERM to :meth:`_handle` (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @abstractmethod
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Called with the signal in place of the default handler."""

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class SetupSignals(_SignalHandlers):
    """Before training: SIGINT and SIGTERM alike interrupt at once (as ``KeyboardInterrupt``, which no ``except
    Exception`` swallows), and leave the block as :class:`~mtl_train.errors.TrainingInterrupted`."""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        super().__exit__(exc_type, exc, traceback)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            signum = self.signum or signal.SIGINT
            raise TrainingInterrupted(f"{signal.Signals(signum).name} received before training started; nothing to "
                                      "resume: run the same command again", signum) from None


class StopSignals(_SignalHandlers):
    """During training: the first SIGINT/SIGTERM is recorded instead of killing; a second one interrupts at once."""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
