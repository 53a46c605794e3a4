"""The ``mtl-train`` command: Hydra composes the config from ``configs/``, :func:`mtl_train.train.train` runs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.text import Text

from mtl_train.engine.report import metrics_table
from mtl_train.errors import UserError
from mtl_train.train import train


def config_dir() -> str:
    """Absolute path of the config tree: ``mtl_train/configs`` inside a built wheel, else the checkout's ``configs/``.

    An absolute path is needed because Hydra turns a relative ``config_path`` of a console script into a
    ``pkg://`` module path (see ../shared/STYLE.md section 2).
    """
    packaged = Path(__file__).resolve().parent / "configs"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    """Train one configuration; a :class:`UserError` becomes one message on stderr and its exit status (1, or
    128 + signal number for an interrupted run)."""
    console = Console()
    try:
        summary = train(cfg)
    except UserError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        sys.exit(error.exit_code)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        console.print(metrics_table(summary))
        console.print(f"outputs: {summary['output_dir']}", highlight=False)


if __name__ == "__main__":
    main()
