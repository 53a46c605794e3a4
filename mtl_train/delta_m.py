"""Δm, the relative multi-task performance against single-task baselines, and the baselines' file.

Definition used everywhere in mtl-train (Maninis, Radosavovic, Kokkinos, CVPR 2019; one metric per task as in
Vandenhende et al., TPAMI 2021)::

    Δm = 100 / K · Σ_k s_k · (M_k − B_k) / B_k        s_k = +1 if higher is better, −1 otherwise

over the K tasks, with M_k the multi-task model's primary test metric of task k (``TaskMetric.primary``; of the
model chosen on validation when ``trainer.model_selection=best_val``, see :func:`test_metrics`) and B_k
the same metric of the single-task model trained with the same budget (``mtl-train stl=true``). Positive Δm
means better than single-task learning (LibMTL's "Δp ↑" sign; the CAGrad / Nash-MTL papers report −Δm).

A single-task run writes ``baselines.json``; ``baselines=PATH`` (that file, or a directory searched for such
files, e.g. a sweep over seeds, whose values are averaged) makes every run add ``delta_m`` to its
``summary.json``.

Tuning (``experiment=tune``) selects on validation, never on test: :func:`delta_m` with ``split="val"`` compares the
run's validation metrics with the single-task models' validation metrics, which ``baselines.json`` also records.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mtl_train.errors import ConfigError
from mtl_train.utils.io import write_json

BASELINES_FILE = "baselines.json"


def test_metrics(summary: dict) -> dict[str, dict[str, float]]:
    """A run's reported test metrics: the validation-selected model's when it has one, else the final model's."""
    return summary["selected"]["test"] if "selected" in summary else summary["final"]["test"]


def val_metrics(summary: dict) -> dict[str, dict[str, float]] | None:
    """A run's validation metrics of the model :func:`test_metrics` reports; None when the summary lacks them (a
    single-task summary with ``trainer.model_selection=best_val`` written before they were recorded)."""
    return summary["selected"].get("val") if "selected" in summary else summary["final"]["val"]


def relative_change(value: float, baseline: float, higher_is_better: bool) -> float | None:
    """``±100 · (value − baseline) / |baseline|``, signed so that an improvement is positive; None when the
    baseline is 0 (the relative change is undefined)."""
    if baseline == 0:
        return None
    change = 100.0 * (value - baseline) / abs(baseline)
    return change if higher_is_better else -change


def delta_m(summary: dict, baselines: dict, split: str = "test") -> dict:
    """Δm of a run's ``summary`` (its reported ``split`` metrics: "test", or "val" for tuning) against ``baselines``
    (:func:`load_baselines`; their metrics on the same split).

    Returns ``{"value", "per_task", "metrics"}``: the mean, each task's signed relative change (None where the
    baseline is 0) and the metric used per task. ``value`` is None when no task has a usable baseline.
    """
    require_tasks(baselines, summary["tasks"])
    if split == "val" and baselines.get("val") is None:
        raise ConfigError(f"baselines {baselines['files']} hold no validation metrics, which tuning compares on; "
                          "write them again with `mtl-train stl=true` (trainer.model_selection=final)")
    measured = test_metrics(summary) if split == "test" else val_metrics(summary)
    reference = baselines["tasks"] if split == "test" else baselines["val"]
    per_task, metrics = {}, {}
    for task in summary["tasks"]:
        metric = summary["primary_metric"][task]
        metrics[task] = metric
        per_task[task] = relative_change(measured[task][metric], reference[task][metric],
                                         summary["higher_is_better"][task][metric])
    usable = [v for v in per_task.values() if v is not None]
    return {"value": statistics.fmean(usable) if usable else None, "per_task": per_task, "metrics": metrics}


def require_tasks(baselines: dict, tasks: list[str]) -> None:
    """Raise :class:`ConfigError` unless ``baselines`` has a result for every one of ``tasks``."""
    missing = [task for task in tasks if task not in baselines["tasks"]]
    if missing:
        raise ConfigError(
            f"baselines has no single-task result for task(s) {missing} (it has {sorted(baselines['tasks'])}); "
            "train them with `mtl-train stl=true` on the same task set"
        )


def write_baselines(output_dir: Path, summary: dict) -> Path:
    """Write the single-task test metrics of ``summary`` (an ``stl=true`` run) to ``output_dir/baselines.json``, and
    its validation metrics under ``val`` when the summary has them (:func:`val_metrics`)."""
    path = Path(output_dir) / BASELINES_FILE
    val = val_metrics(summary)
    write_json(path, {"tasks": test_metrics(summary), **({"val": val} if val is not None else {}),
                      "seed": summary["seed"], "config_digest": summary["config_digest"]})
    return path


def load_baselines(path: str | Path) -> dict:
    """``{"tasks": {task: {metric: value}}, "val": {...} or None, "files": [...]}`` from a ``baselines.json`` or
    every one under a directory (each metric averaged over the files that have it; ``val``, the validation
    metrics, only when every file has them)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob(BASELINES_FILE)) if path.is_dir() else []
    if not files:
        raise ConfigError(
            f"baselines={path} is not a {BASELINES_FILE} file or a directory holding one; write them first with "
            f"`mtl-train stl=true hydra.run.dir=<dir>` and pass baselines=<dir>"
        )
    samples: dict[str, dict[str, dict[str, list[float]]]] = {"tasks": {}, "val": {}}
    with_val = 0
    for file in files:
        try:
            content = json.loads(file.read_text())
            sections = {"tasks": content["tasks"], **({"val": content["val"]} if "val" in content else {})}
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"baselines file {file} is unreadable ({error!r}); delete it and rerun `mtl-train stl=true`") from None
        with_val += "val" in sections
        for section, tasks in sections.items():
            for task, metrics in tasks.items():
                for name, value in metrics.items():
                    samples[section].setdefault(task, {}).setdefault(name, []).append(value)
    averaged = {section: {task: {name: statistics.fmean(values) for name, values in metrics.items()}
                          for task, metrics in tasks.items()}
                for section, tasks in samples.items()}
    return {"tasks": averaged["tasks"], "val": averaged["val"] if with_val == len(files) else None,
            "files": [str(f) for f in files]}
