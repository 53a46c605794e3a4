"""A dataset whose ``build()`` sends this process a signal, as when Ctrl-C (SIGINT) or ``kill`` (SIGTERM) arrives
while a run loads its data. CLI tests select it with ``dataset._target_=signalling_dataset.SignalDuringBuild``
(``tests/`` is on the Python path under pytest) and ``+dataset.signal_name=SIGTERM``."""

from __future__ import annotations

import signal
from typing import Any


class SignalDuringBuild:
    """Takes (and ignores) the keys of the dataset config it replaces."""

    def __init__(self, signal_name: str = "SIGINT", **dataset_keys: Any) -> None:
        self.signum = signal.Signals[signal_name]

    def build(self) -> None:
        signal.raise_signal(self.signum)
        raise AssertionError(f"{self.signum.name} did not stop the run")
