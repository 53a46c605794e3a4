"""The ``mtl-train`` command: Hydra composes the config from ``configs/``, :func:`mtl_train.train.train` runs it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from mtl_train.delta_m import load_baselines
from mtl_train.engine.report import metrics_table
from mtl_train.errors import ConfigError, UserError, exit_with
from mtl_train.help import register_help_resolver
from mtl_train.train import train
from mtl_train.tuning import check_sweeper_installed, is_tuning, objective, register_search_space_resolver


def config_dir() -> str:
    """Absolute path of the config tree: ``mtl_train/configs`` inside a built wheel, else the checkout's ``configs/``.

    An absolute path is needed: Hydra reads a relative ``config_path`` of a function in an imported module (as a
    console script's is) as a ``pkg://`` path inside that Python package, and a checkout's ``configs/`` lies
    outside the package.
    """
    packaged = Path(__file__).resolve().parent / "configs"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs")


register_help_resolver(config_dir())  # fills in the generated parts of `mtl-train --help`
register_search_space_resolver()  # hydra.sweeper.params of experiment=tune


def check_config_dir_argument(argv: list[str]) -> None:
    """Raise :class:`ConfigError` when ``argv`` names a ``--config-dir`` (``-cd``) that is not a directory: Hydra
    would stop with two lines of its own."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config-dir", "-cd")
    known, _ = parser.parse_known_args(argv)
    if known.config_dir is not None and not Path(known.config_dir).is_dir():
        raise ConfigError(
            f"--config-dir {known.config_dir}: no such directory ({Path(known.config_dir).absolute()}); give the "
            "folder that holds your config groups, e.g. --config-dir ./configs with ./configs/dataset/my_data.yaml "
            "for dataset=my_data")


def main() -> None:
    """The ``mtl-train`` console script: check ``--config-dir`` and, for ``experiment=tune``, that the Optuna
    sweeper is installed; then let Hydra compose and run :func:`hydra_main`."""
    try:
        check_config_dir_argument(sys.argv[1:])
        check_sweeper_installed(sys.argv[1:])
    except ConfigError as error:
        exit_with(error)
    hydra_main()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Train one configuration; a :class:`UserError` becomes one message on stderr and its exit status (1, or
    128 + signal number for an interrupted run). A trial of Hydra's Optuna sweeper (``experiment=tune``) returns
    the value it maximises (:func:`mtl_train.tuning.objective`); any other run returns None."""
    console = Console()
    try:
        summary = train(cfg)
    except UserError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        exit_with(error)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        console.print(metrics_table(summary))
        console.print(f"outputs: {summary['output_dir']}", highlight=False)
    if not is_tuning():
        return None
    value, name = objective(summary, load_baselines(cfg.baselines) if cfg.baselines is not None else None)
    console.print(f"tuning objective ({name}): {value:.6g}", highlight=False)
    return value


if __name__ == "__main__":
    main()
