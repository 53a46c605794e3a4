"""User-facing errors: raised for bad input, printed by the CLI as one clear message (no traceback)."""


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
    """SIGINT/SIGTERM stopped training after a checkpoint was saved; exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
