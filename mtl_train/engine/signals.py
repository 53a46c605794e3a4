"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (``kill``, SLURM pre-emption) end training after the current step.

Inside :class:`StopSignals` the first such signal only sets :attr:`StopSignals.signum`; the training loop checks it
after every step, saves a checkpoint and raises :class:`~mtl_train.errors.TrainingInterrupted`. A second signal
interrupts at once (``KeyboardInterrupt``), for a user who really wants out.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager that records the first SIGINT/SIGTERM instead of dying (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
