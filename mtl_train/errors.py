"""User-facing errors: raised for bad input, printed by the CLI as one clear message (no traceback)."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console
from rich.text import Text


class UserError(Exception):
    """A problem the user can fix (bad config value, missing data, unavailable device).

    The message must name the offending config key or path and say how to fix it. ``exit_code`` is the status
    ``mtl-train`` exits with.
    """

    exit_code = 1


class ConfigError(UserError):
    """A config value is invalid or inconsistent with another one."""


class DataNotFoundError(UserError):
    """A dataset is not on disk and cannot be downloaded."""


class NonFiniteLossError(UserError):
    """A task loss became NaN or infinite during training."""


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM stopped the run (after saving a checkpoint, once training has started); exits with 128 + the
    signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def exit_with(error: UserError) -> NoReturn:
    """Print ``error`` as one ``error: ...`` message on stderr and exit with its status."""
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
    sys.exit(error.exit_code)
