"""``train(cfg)``: build everything a config names, fit, and write the run's outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mtl_train.engine.device import resolve_amp, resolve_device
from mtl_train.engine.outputs import RunWriter
from mtl_train.engine.trainer import Trainer, TrainerSettings
from mtl_train.errors import ConfigError
from mtl_train.model import MultiTaskModel
from mtl_train.plots import plot_run
from mtl_train.tasks import build_tasks
from mtl_train.utils.instantiate import instantiate
from mtl_train.utils.seed import seed_everything


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain containers, interpolations resolved (Hydra's own node excluded)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def config_digest(config: dict) -> str:
    """A short content hash of the resolved config (to tell runs with identical settings apart from others)."""
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(config)).encode()).hexdigest()[:12]


def build_optimizer(cfg: DictConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    factory = instantiate(cfg.optimizer, "optimizer")
    try:
        return factory(param_groups)
    except ValueError as error:
        raise ConfigError(f"optimizer: {error}; check optimizer.lr and the other optimizer.* values") from None


def trainer_settings(cfg: DictConfig) -> TrainerSettings:
    names = {f.name for f in dataclasses.fields(TrainerSettings)}
    return TrainerSettings(**{k: v for k, v in cfg.trainer.items() if k in names})


def train(cfg: DictConfig) -> dict:
    """Train the model ``cfg`` describes; write every output into ``cfg.output_dir``; return the summary."""
    start = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    config = resolved_config(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_amp(cfg.trainer.amp, device)
    settings = trainer_settings(cfg)

    data = instantiate(cfg.dataset, "dataset").build()
    tasks = build_tasks(cfg.task, data.target_names)
    task_names = [task.name for task in tasks]
    backbone = instantiate(cfg.backbone, "backbone", task_names=task_names, in_channels=data.in_channels,
                           input_size=data.spatial_size)
    heads = {
        name: instantiate(cfg.task[name].head, f"task.{name}.head",
                          in_channels=backbone.out_channels, spatial_dims=backbone.spatial_dims)
        for name in task_names
    }
    model = MultiTaskModel(backbone, heads).to(device)
    weighting = instantiate(cfg.weighting, "weighting", task_names=task_names).to(device)
    schedule = instantiate(cfg.schedule, "schedule", task_names=task_names)
    optimizer = build_optimizer(cfg, [{"params": list(model.parameters())}, *weighting.optimizer_groups()])
    scheduler = instantiate(cfg.scheduler.build, "scheduler.build")(optimizer)

    penalty_names = [backbone.penalty_name] if backbone.penalty_name else []
    writer = RunWriter(output_dir, task_names, penalty_names, tensorboard=cfg.trainer.tensorboard)
    trainer = Trainer(
        model, tasks, weighting, schedule, optimizer, scheduler, cfg.scheduler.interval, data, device, amp_dtype,
        settings, writer, config, cfg.seed,
    )
    try:
        result = trainer.fit()
    finally:
        writer.close()
    summary = {
        "tasks": task_names,
        "weighting": cfg.weighting._target_.rsplit(".", 1)[-1],
        **result,
        "wall_time_s": time.perf_counter() - start,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "amp": cfg.trainer.amp,
        "seed": cfg.seed,
        "config_digest": config_digest(config),
        "output_dir": str(output_dir),
    }
    writer.write_summary(summary)
    if cfg.trainer.plots:
        plot_run(output_dir)
    return summary
