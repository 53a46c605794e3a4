"""``train(cfg)``: build everything a config names, fit, and write the run's outputs."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_train.engine.device import resolve_amp, resolve_device
from mtl_train.engine.acceleration import accelerate
from mtl_train.engine.distributed import Distributed, init_distributed
from mtl_train.engine.outputs import NullRunWriter, RunWriter, WallClock
from mtl_train.engine.signals import SetupSignals
from mtl_train.engine.trainer import Trainer, TrainerSettings
from mtl_train.config_checks import TRAINER_RUN_KEYS, check_config
from mtl_train.diagnostics.gradients import diagnostics_settings
from mtl_train.diagnostics.sampling import diagnostics_headers
from mtl_train.diagnostics.summary import diagnostics_summary
from mtl_train.delta_m import delta_m, load_baselines, require_tasks, test_metrics, write_baselines
from mtl_train.errors import ConfigError
from mtl_train.model import MultiTaskModel
from mtl_train.plots import plot_run
from mtl_train.run_dir import RunDirectory
from mtl_train.schedules.joint import JointSchedule
from mtl_train.labels import check_labels
from mtl_train.tasks import build_tasks, check_tasks_fit
from mtl_train.utils.instantiate import instantiate
from mtl_train.utils.io import write_json
from mtl_train.utils.seed import seed_everything
from mtl_train.weighting.ew import EqualWeighting


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain containers, interpolations resolved (Hydra's own node excluded)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def config_digest(config: dict) -> str:
    """A short content hash of the resolved config (to tell runs with identical settings apart from others)."""
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(config)).encode()).hexdigest()[:12]


def build_optimizer(cfg: DictConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    lr = cfg.optimizer.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ConfigError(f"optimizer.lr must be a number > 0, got {lr!r}; e.g. optimizer.lr=1e-3")
    factory = instantiate(cfg.optimizer, "optimizer")
    try:
        return factory(param_groups)
    except ValueError as error:
        raise ConfigError(f"optimizer: {error}; check optimizer.lr and the other optimizer.* values") from None


def trainer_settings(cfg: DictConfig) -> TrainerSettings:
    """The :class:`TrainerSettings` of ``cfg.trainer``: every key but those this module reads itself
    (:data:`~mtl_train.config_checks.TRAINER_RUN_KEYS`); :func:`check_config` has rejected any other key."""
    return TrainerSettings(**{key: value for key, value in cfg.trainer.items() if key not in TRAINER_RUN_KEYS})


def resume_path(resume: bool | str | None, output_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume`` names: ``true`` -> this run's ``checkpoints/last.pt``; a run directory ->
    its ``checkpoints/last.pt``; a file -> itself; ``false``/null -> None (a fresh run)."""
    if resume is None or resume is False:
        return None
    path = output_dir if resume is True else Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError(
            f"trainer.resume={resume}: no checkpoint at {path}; point hydra.run.dir at the run to continue "
            "(trainer.resume=true), or give its directory or checkpoint file (trainer.resume=<path>)"
        )
    return path


def read_checkpoint(path: Path | None, device: torch.device) -> dict | None:
    """The checkpoint at ``path`` (None when there is none), with the directory of the run that wrote it."""
    if path is None:
        return None
    try:
        # weights_only=False: the file holds Python/NumPy RNG states; it is a checkpoint this tool wrote.
        state = torch.load(path, map_location=device, weights_only=False)
        run_dir = path.parent.parent
        missing = [name for name in ("losses.csv", "weights.csv", "metrics.jsonl") if not (run_dir / name).is_file()]
        if missing or not isinstance(state, dict) or "loop" not in state:
            raise ValueError(f"not a complete mtl-train run: missing {missing or 'the loop state'}")
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ConfigError(
            f"trainer.resume: cannot resume from {path} ({error}); it may be corrupt or from another tool. "
            "Start afresh with trainer.resume=false, or point trainer.resume at an intact run"
        ) from None
    return {**state, "run_dir": run_dir}


def train(cfg: DictConfig) -> dict:
    """Train what ``cfg`` describes (one multi-task model, or with ``stl=true`` one single-task model per task);
    write every output into ``cfg.output_dir``; return the summary.

    An earlier run in ``cfg.output_dir`` is only continued (``trainer.resume``) or, with ``trainer.overwrite=true``,
    replaced; a run that stops before training leaves it as it was (:class:`RunDirectory`). SIGINT/SIGTERM before
    training stop at once with :class:`~mtl_train.errors.TrainingInterrupted` (:class:`SetupSignals`)."""
    run_dir = RunDirectory(Path(cfg.output_dir), is_main=int(os.environ.get("RANK", "0")) == 0)  # torchrun's rank 0
    distributed = Distributed()
    try:
        run_dir.check(cfg.trainer.resume, cfg.trainer.overwrite)
        with SetupSignals():  # torchrun's rendezvous may wait for the other ranks
            distributed, device_name = init_distributed(cfg.trainer.device)
        if cfg.stl:
            summary = train_single_task_baselines(cfg, distributed, device_name, run_dir)
        else:
            summary = train_model(cfg, distributed, device_name, run_dir)
        if distributed.enabled:
            torch.distributed.barrier()  # no rank tears down the process group while another still uses it
        return summary
    finally:
        run_dir.close()
        if distributed.enabled:
            torch.distributed.destroy_process_group()


def train_model(cfg: DictConfig, distributed: Distributed = Distributed(), device_name: str | None = None,
                run_dir: RunDirectory | None = None) -> dict:
    """Train one model on every task of ``cfg.task``; add Δm to the summary when ``cfg.baselines`` is set.
    ``distributed``/``device_name`` place this process in a torchrun job (:func:`init_distributed`); ``run_dir``
    is told when training starts (:meth:`RunDirectory.start_training`): every check has passed by then, and no
    file of the run has been written."""
    start = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    with SetupSignals():
        check_config(cfg)
        baselines = load_baselines(cfg.baselines) if cfg.baselines is not None else None
        config = resolved_config(cfg)
        seed_everything(cfg.seed)
        device = resolve_device(device_name or cfg.trainer.device)
        amp_dtype = resolve_amp(cfg.trainer.amp, device)
        settings = trainer_settings(cfg)
        diagnostics = diagnostics_settings(cfg.get("diagnostics"))

        data = instantiate(cfg.dataset, "dataset").build()
        tasks = build_tasks(cfg.task, data.target_names)
        check_labels(tasks, data)
        task_names = [task.name for task in tasks]
        if baselines is not None:
            require_tasks(baselines, task_names)
        backbone = instantiate(cfg.backbone, "backbone", task_names=task_names, in_channels=data.in_channels,
                               input_size=data.spatial_size)
        heads = {
            name: instantiate(cfg.task[name].head, f"task.{name}.head",
                              in_channels=backbone.out_channels, spatial_dims=backbone.spatial_dims)
            for name in task_names
        }
        model = accelerate(MultiTaskModel(backbone, heads), channels_last=cfg.trainer.channels_last).to(device)
        check_tasks_fit(model, tasks, data)
        weighting = instantiate(cfg.weighting, "weighting", task_names=task_names).to(device)
        schedule = instantiate(cfg.schedule, "schedule", task_names=task_names)
        optimizer = build_optimizer(cfg, [{"params": list(model.parameters())}, *weighting.optimizer_groups()])
        scheduler = instantiate(cfg.scheduler.build, "scheduler.build")(optimizer)

        checkpoint = read_checkpoint(resume_path(cfg.trainer.resume, output_dir), device)
        clock = WallClock(start, before_s=checkpoint.get("wall_time_s", 0.0) if checkpoint else 0.0)
        penalty_names = [backbone.penalty_name] if backbone.penalty_name else []
        if distributed.is_main:
            writer = RunWriter(output_dir, task_names, penalty_names, tensorboard=cfg.trainer.tensorboard,
                               resume_from=(checkpoint["run_dir"], checkpoint["loop"]["step"]) if checkpoint else None,
                               clock=clock, step_files=diagnostics_headers(diagnostics, task_names))
        else:
            writer = NullRunWriter(output_dir, task_names, penalty_names)
        trainer = Trainer(
            model, tasks, weighting, schedule, optimizer, scheduler, cfg.scheduler.interval, data, device, amp_dtype,
            settings, writer, config, cfg.seed, distributed, diagnostics,
        )
        if checkpoint:
            trainer.load_checkpoint_state(checkpoint)
    if distributed.enabled:
        torch.distributed.barrier()  # every rank is set up (its log lines written) before rank 0 moves the record
    if run_dir is not None:
        run_dir.start_training()
    writer.open()
    try:
        result = trainer.fit()
    finally:
        writer.close()
    part_s = clock.this_part_s()
    summary = {
        "tasks": task_names,
        "weighting": cfg.weighting._target_.rsplit(".", 1)[-1],
        **result,
        "wall_time_s": clock.before_s + part_s,  # every part of a resumed run
        "wall_time_this_part_s": part_s,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "amp": cfg.trainer.amp,
        "seed": cfg.seed,
        "config_digest": config_digest(config),
        "data_sources": data.sources,
        "output_dir": str(output_dir),
    }
    if diagnostics.enabled and distributed.is_main:
        summary["diagnostics"] = diagnostics_summary(output_dir, diagnostics)
    if baselines is not None:
        summary["delta_m"] = {**delta_m(summary, baselines), "baselines": baselines["files"]}
    writer.write_summary(summary)
    if cfg.trainer.plots and distributed.is_main:
        plot_run(output_dir, diagnostics=diagnostics.enabled)
    return summary


def single_task_config(cfg: DictConfig, task: str) -> DictConfig:
    """``cfg`` restricted to ``task``: same data, backbone, optimizer and budget; equal weighting, joint schedule;
    outputs in ``<output_dir>/stl/<task>``."""
    single = cfg.copy()
    with open_dict(single):
        single.task = {task: cfg.task[task]}
        single.weighting = {"_target_": f"{EqualWeighting.__module__}.{EqualWeighting.__qualname__}"}
        single.schedule = {"_target_": f"{JointSchedule.__module__}.{JointSchedule.__qualname__}"}
        single.stl = False
        single.baselines = None
        single.output_dir = str(Path(cfg.output_dir) / "stl" / task)
    return single


def train_single_task_baselines(cfg: DictConfig, distributed: Distributed, device_name: str,
                                run_dir: RunDirectory | None = None) -> dict:
    """``stl=true``: one single-task model per task, each run written to ``<output_dir>/stl/<task>``; the combined
    summary (every task's metrics, as a multi-task run's) and ``baselines.json`` go to ``<output_dir>``. ``run_dir``
    (``<output_dir>``) is told when the first of them starts training."""
    start = time.perf_counter()
    runs = {task: train_model(single_task_config(cfg, task), distributed, device_name, run_dir) for task in cfg.task}
    part_s = time.perf_counter() - start
    first = next(iter(runs.values()))
    summary = {
        "tasks": list(runs),
        "weighting": "single_task",
        "stl": True,
        "final": {split: {task: run["final"][split][task] for task, run in runs.items()} for split in ("val", "test")},
        **({"selected": {"test": {task: test_metrics(run)[task] for task, run in runs.items()},
                         "val": {task: run["selected"]["val"][task] for task, run in runs.items()},
                         "step": {task: run["selected"]["step"] for task, run in runs.items()}}}
           if cfg.trainer.model_selection == "best_val" else {}),
        "best": {task: run["best"][task] for task, run in runs.items()},
        "higher_is_better": {task: run["higher_is_better"][task] for task, run in runs.items()},
        "primary_metric": {task: run["primary_metric"][task] for task, run in runs.items()},
        "steps": first["steps"],
        "epochs": first["epochs"],
        "wall_time_s": part_s + sum(run["wall_time_s"] - run["wall_time_this_part_s"] for run in runs.values()),
        "wall_time_this_part_s": part_s,
        "device": first["device"],
        "amp": cfg.trainer.amp,
        "seed": cfg.seed,
        "config_digest": config_digest(resolved_config(cfg)),
        "output_dir": cfg.output_dir,
        "runs": {task: run["output_dir"] for task, run in runs.items()},
    }
    if distributed.is_main:
        write_json(Path(cfg.output_dir) / "summary.json", summary)
        write_baselines(Path(cfg.output_dir), summary)
    return summary
