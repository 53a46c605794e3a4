"""Hyperparameter tuning with Hydra's Optuna sweeper (``experiment=tune``): the search space, the objective and the
best trial's overrides.

* The search space: each config group option may hold a ``search`` node mapping its settings to Hydra sweep
  expressions (``configs/weighting/gradnorm.yaml``: ``search: {alpha: interval(0.1, 3.0)}``);
  :func:`search_space`, registered as the ``${mtl_search_space:...}`` resolver, turns the chosen groups' nodes into
  the sweeper's ``hydra.sweeper.params`` (``weighting.alpha: interval(0.1, 3.0)``, ``optimizer.lr: ...``).
* The objective, maximised on the validation split (:func:`objective`): Δm against single-task baselines when
  ``baselines=`` is given (:func:`mtl_train.delta_m.delta_m` with ``split="val"``), else the mean over tasks of the
  primary validation metric, negated where lower is better.
* ``mtl-train-best SWEEP_DIR`` (:func:`main`) prints the overrides of the best trial, read from the sweeper's
  ``optimization_results.yaml``, to re-run it over seeds on test:
  ``mtl-train -m $(mtl-train-best SWEEP_DIR) seed=0,1,2``.

Optuna: Akiba et al., KDD 2019, "Optuna: A Next-generation Hyperparameter Optimization Framework"; its default
sampler is TPE (Bergstra et al., NeurIPS 2011).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtl_train.delta_m import delta_m, val_metrics
from mtl_train.errors import ConfigError, UserError, exit_with

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
"""``hydra.sweeper._target_`` of Hydra's Optuna sweeper (``pip install 'mtl-train[tune]'``)."""

RESULTS_FILE = "optimization_results.yaml"
"""What the Optuna sweeper writes into the sweep directory: ``best_params`` and ``best_value``."""


def search_space(*groups: str, _root_: DictConfig) -> dict[str, str]:
    """The ``search`` nodes of the config ``groups`` (e.g. ``optimizer``, ``weighting``) as one mapping from full
    keys to sweep expressions: ``{"weighting.alpha": "interval(0.1, 3.0)", ...}``; a group whose option has no
    ``search`` node adds nothing. Hydra also resolves it while composing, before every group is in ``_root_``: a
    group not there yet adds nothing either."""
    space = {}
    for group in groups:
        node = _root_.get(group)
        search = node.get("search") if isinstance(node, DictConfig) else None
        space.update({f"{group}.{name}": str(expression) for name, expression in (search or {}).items()})
    return space


def register_search_space_resolver() -> None:
    """Register :func:`search_space` as ``${mtl_search_space:GROUP,...}`` (``configs/experiment/tune.yaml``)."""
    if not OmegaConf.has_resolver("mtl_search_space"):
        OmegaConf.register_new_resolver("mtl_search_space", search_space)


def check_sweeper_installed(argv: list[str]) -> None:
    """Raise :class:`ConfigError` when ``argv`` chooses ``experiment=tune`` and Hydra's Optuna sweeper is not
    installed (Hydra would only list the sweepers it has)."""
    if "experiment=tune" in argv and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        raise ConfigError("experiment=tune needs Hydra's Optuna sweeper, which is not installed: "
                          "pip install 'mtl-train[tune]' (or pip install hydra-optuna-sweeper)")


def is_tuning() -> bool:
    """Whether this run is a trial of Hydra's Optuna sweeper (which reads the task function's return value)."""
    hydra = HydraConfig.get()
    return hydra.mode == RunMode.MULTIRUN and hydra.sweeper.get("_target_") == OPTUNA_SWEEPER


def objective(summary: dict, baselines: dict | None) -> tuple[float, str]:
    """The value a trial maximises and its name, from the run's ``summary`` and, when given, ``baselines``
    (:func:`mtl_train.delta_m.load_baselines`).

    With baselines: Δm (%) of the validation metrics against the single-task models' validation metrics. Without:
    ``1/K Σ_k s_k M_k`` over the K tasks' primary validation metrics M_k, s_k = +1 if higher is better, else -1. The
    metrics are not rescaled, so one on a larger scale (PSNR in dB against an accuracy) weighs more; pass baselines
    for a scale-free objective.
    """
    if baselines is not None:
        value = delta_m(summary, baselines, split="val")["value"]
        if value is None:
            raise ConfigError("baselines: every single-task validation metric is 0, so Δm is undefined; tune without "
                              "baselines= or on another metric (task.<name>.primary)")
        return value, "Δm on val (%)"
    metrics = val_metrics(summary)
    signed = [metrics[task][metric] * (1 if summary["higher_is_better"][task][metric] else -1)
              for task, metric in summary["primary_metric"].items()]
    return statistics.fmean(signed), "mean signed primary val metric"


def best_overrides(sweep_dir: Path) -> list[str]:
    """The command-line overrides that re-run the best trial of the Optuna sweep in ``sweep_dir``: a trial's own
    overrides (``<trial>/.hydra/overrides.yaml``) less ``experiment=tune`` and the searched keys, followed by the
    best parameters (``optimization_results.yaml``)."""
    results_path = sweep_dir / RESULTS_FILE
    trials = sorted(sweep_dir.glob("*/.hydra/overrides.yaml"))
    if not results_path.is_file() or not trials:
        raise UserError(f"{sweep_dir} holds no finished tuning sweep ({RESULTS_FILE} and its trials); give the "
                        "directory of `mtl-train -m experiment=tune ...` (its first log line names it)")
    best = OmegaConf.load(results_path).best_params
    kept = [override for override in OmegaConf.load(trials[0])
            if override != "experiment=tune" and override.split("=", 1)[0].lstrip("+~") not in best]
    return kept + [f"{name}={value}" for name, value in best.items()]


def main(argv: list[str] | None = None) -> None:
    """``mtl-train-best SWEEP_DIR``: print the best trial's overrides on one line."""
    parser = argparse.ArgumentParser(
        prog="mtl-train-best",
        description="Print the overrides of the best trial of an Optuna sweep (mtl-train -m experiment=tune ...), "
                    "to re-run it over seeds on test: mtl-train -m $(mtl-train-best SWEEP_DIR) seed=0,1,2")
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (holds optimization_results.yaml)")
    args = parser.parse_args(argv)
    try:
        print(" ".join(best_overrides(args.sweep_dir)))
    except UserError as error:
        exit_with(error)


if __name__ == "__main__":
    main(sys.argv[1:])
