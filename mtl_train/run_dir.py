"""A run directory's safety rules: a run never replaces another run's files by accident (only ``trainer.resume``
continues an earlier run, only ``trainer.overwrite=true`` replaces it), and a run that fails before training leaves
an earlier run in its directory exactly as it was.

Hydra records every run (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``, and the log, ``cli.log``) before
``mtl-train``'s own code starts. ``configs/hydra/default.yaml`` sends that record to ``.hydra_pending/``
(``hydra.output_subdir``), and :class:`RunDirectory` moves it to ``.hydra/`` when training starts. A run that stops
before training (bad config, corrupt checkpoint, Ctrl-C) moves it there too when the directory held no earlier run,
so that a failed sweep job still shows its config; where an earlier run lives, it deletes the pending record.

:class:`RunDirCheck` is the Hydra callback that stops with one clear message when ``hydra.run.dir`` (or
``hydra.sweep.dir``) cannot be created or written, before Hydra tries to write there.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtl_train.errors import ConfigError, exit_with

PENDING_RECORD = ".hydra_pending"  # hydra.output_subdir in configs/hydra/default.yaml
RECORD = ".hydra"
# Files and folders that only a run that trained writes (a .hydra/ alone may be the record of a failed start).
RUN_FILES = ("summary.json", "metrics.jsonl", "losses.csv", "weights.csv", "checkpoints", "baselines.json", "stl")


def previous_run_files(run_dir: Path) -> list[str]:
    """The names in :data:`RUN_FILES` that ``run_dir`` holds: an earlier run trained there when any does."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def continues_run_in(resume: bool | str | None, run_dir: Path) -> bool:
    """Whether ``trainer.resume`` continues the run in ``run_dir``: ``true``, or a path to it or into it."""
    if resume is True:
        return True
    if resume is None or resume is False:
        return False
    target, here = Path(resume).resolve(), run_dir.resolve()
    return target == here or here in target.parents


class RunDirectory:
    """The directory a run writes into: refuses to replace an earlier run, and keeps Hydra's record in step.

    Construct it and :meth:`check` before anything is written (every torchrun rank does, before the ranks meet),
    call :meth:`start_training` just before the run's files are opened, and :meth:`close` when the run ends, however
    it ends. Under torchrun every rank's Hydra writes the pending record; ``is_main=False`` (ranks other than 0) only
    ever deletes it.
    """

    def __init__(self, path: Path, is_main: bool = True) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self.earlier_run = previous_run_files(self.path)
        self.replaces_earlier_run = False
        self.started = False

    def check(self, resume: bool | str | None, overwrite: bool) -> None:
        """Refuse (:class:`ConfigError`) to write over an earlier run unless ``trainer.resume`` continues it or
        ``trainer.overwrite=true`` replaces it."""
        if not isinstance(overwrite, bool):
            raise ConfigError(f"trainer.overwrite must be true or false, got {overwrite!r}")
        if self.earlier_run and not continues_run_in(resume, self.path):
            if not overwrite:
                raise ConfigError(
                    f"hydra.run.dir={self.path} already holds a run ({', '.join(self.earlier_run)}); continue it with "
                    "trainer.resume=true, replace it with trainer.overwrite=true, or choose another hydra.run.dir"
                )
            self.replaces_earlier_run = True

    def start_training(self) -> None:
        """The run is about to write its files: delete the earlier run's if this run replaces it (so no stale
        checkpoint or row file of it is left to resume from), and move Hydra's pending record to ``.hydra/``. Only the
        first call acts: ``stl=true`` calls it once per single-task model, and the later ones must not delete the
        earlier ones' ``stl/`` folders."""
        if self.started:
            return
        self.started = True
        if self.replaces_earlier_run and self.is_main:
            for name in self.earlier_run:
                path = self.path / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        self._commit_record()

    def close(self) -> None:
        """The run ended. If it never trained, an earlier run's record stays and the pending one is deleted; in a
        directory without an earlier run, the pending record becomes ``.hydra/`` (as Hydra would have left it)."""
        if self.started:
            return
        if self.earlier_run:
            move_file_logs(self.path / PENDING_RECORD, None)
            shutil.rmtree(self.path / PENDING_RECORD, ignore_errors=True)
        else:
            self._commit_record()

    def _commit_record(self) -> None:
        pending = self.path / PENDING_RECORD
        if not self.is_main or not pending.is_dir():
            return
        record = self.path / RECORD
        record.mkdir(exist_ok=True)
        for file in pending.iterdir():
            os.replace(file, record / file.name)
        pending.rmdir()
        move_file_logs(pending, record)


def move_file_logs(old_dir: Path, new_dir: Path | None) -> None:
    """Point every logging file handler that writes into ``old_dir`` (Hydra's ``cli.log``) at the same file name in
    ``new_dir``, or drop it when ``new_dir`` is None, so that later messages neither fail on the moved folder nor
    recreate it."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == old_dir.absolute():
                handler.close()  # reopened at its next message (mode "a"), under its new name
                if new_dir is None:
                    logger.removeHandler(handler)
                else:
                    handler.baseFilename = str((new_dir / Path(handler.baseFilename).name).absolute())


def writable_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as an output directory (it cannot be created, or is not writable), or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot be created ({error.strerror or error})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None


class RunDirCheck(Callback):
    """Hydra callback: one ``error:`` line and exit status 1 when the run's or sweep's directory is unusable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: lets the dir use ${hydra:...}
        check_output_dir("hydra.run.dir", config.hydra.run.dir, example="outputs/my_run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        check_output_dir("hydra.sweep.dir", config.hydra.sweep.dir, example="multirun/my_sweep")


def check_output_dir(key: str, value: str, example: str) -> None:
    """Exit with one message naming ``key`` and the fix when directory ``value`` cannot be created or written."""
    problem = writable_dir_problem(Path(value))
    if problem is not None:
        exit_with(ConfigError(f"{key}={value} {problem}; set {key} to a writable directory, e.g. {key}={example}"))
