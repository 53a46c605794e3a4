"""Every option of every config group composes and instantiates; every component module has its YAML."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config
from omegaconf import OmegaConf, open_dict

from mtl_train.backbones.base import Backbone
from mtl_train.config_checks import check_config
from mtl_train.metrics.base import TaskMetric
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import Weighting

REPO = Path(__file__).resolve().parents[1]
REQUIRED_SCHEDULE_KEYS = {"task": "denoise", "tasks": ["rhythm"]}
"""Values for the schedule keys the YAMLs leave required (???)."""


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


GROUPS = ["task", "dataset", "backbone", "heads", "loss", "weighting", "schedule", "optimizer", "scheduler",
          "trainer", "hydra", "experiment", "debug"]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"configs/{group}/ is empty"


@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ("heads", "loss", "hydra")])
def test_every_option_composes_and_passes_the_config_checks(group: str, tmp_path: Path) -> None:
    for option in options(group):
        cfg = compose_config([f"{group}={option}"], output_dir=tmp_path)
        if group == "schedule":  # the options with a required key (???) need it from the command line
            with open_dict(cfg):
                cfg.schedule.merge_with({key: REQUIRED_SCHEDULE_KEYS[key] for key in cfg.schedule.keys()
                                         if OmegaConf.is_missing(cfg.schedule, key)})
        OmegaConf.to_container(cfg.task, resolve=True, throw_on_missing=True)
        assert cfg.trainer.device in ("auto", "cpu", "cuda")
        check_config(cfg)


@pytest.mark.parametrize("task", options("task"))
def test_task_components_instantiate(task: str) -> None:
    cfg = compose_config([f"task={task}"])
    ecg = cfg.dataset._target_.endswith("SyntheticECG")
    input_size = [2500] if ecg else [28, 28]  # synthetic ECG segments, MNIST-family images
    backbone = instantiate(cfg.backbone, "backbone", task_names=list(cfg.task), in_channels=1, input_size=input_size)
    assert isinstance(backbone, Backbone)
    for name, node in cfg.task.items():
        head = instantiate(node.head, f"task.{name}.head", in_channels=backbone.out_channels,
                           spatial_dims=backbone.spatial_dims)
        assert isinstance(head, torch.nn.Module)
        assert isinstance(instantiate(node.loss, f"task.{name}.loss"), torch.nn.Module)
        assert isinstance(instantiate(node.metric, f"task.{name}.metric"), TaskMetric)


@pytest.mark.parametrize("option", options("heads"))
def test_every_head_builds_and_runs_with_the_tasks_size(option: str) -> None:
    """Each head YAML takes its output size from the task node it is mounted on (``task.<name>.num_outputs``)."""
    head_node = OmegaConf.load(CONFIG_DIR / "heads" / f"{option}.yaml")
    cfg = OmegaConf.create({"task": {"t": {"num_outputs": 3, "head": head_node}}})
    head = instantiate(cfg.task.t.head, "task.t.head", in_channels=8, spatial_dims=2)
    out = head(torch.randn(2, 8, 7, 7), (28, 28))
    assert out.shape[:2] == (2, 3) and torch.isfinite(out).all()


# (task set, task, head option swapped in, the spatial dims of the task set's backbone)
HEAD_SWAPS = [
    ("ecg_cls_rec", "rhythm", "multi_lenet_classification", 1),
    ("ecg_cls_rec", "denoise", "dense", 1),
    ("ecg_full", "rhythm", "regression", 1),
    ("ecg_full", "heart_rate", "classification", 1),
    ("ecg_full", "waves", "reconstruction", 1),
    ("cls_rec", "rec", "dense", 2),
    ("cls_rec", "cls", "reconstruction", 2),
]


@pytest.mark.parametrize(("task_set", "task", "head", "spatial_dims"), HEAD_SWAPS,
                         ids=[f"{t}.{n}={h}" for t, n, h, _ in HEAD_SWAPS])
def test_a_swapped_head_takes_the_tasks_settings_and_nothing_of_the_old_head(
    task_set: str, task: str, head: str, spatial_dims: int
) -> None:
    """``heads@task.<name>.head=<option>`` builds the option with the task's ``num_outputs``; no key of the task
    set's own head is merged into it (whether the head fits the task's targets is checked at build, see
    tests/test_tasks.py)."""
    cfg = compose_config([f"task={task_set}", f"heads@task.{task}.head={head}"])
    node = cfg.task[task]
    expected = OmegaConf.load(CONFIG_DIR / "heads" / f"{head}.yaml")
    assert set(node.head.keys()) == set(expected.keys())
    module = instantiate(node.head, f"task.{task}.head", in_channels=8, spatial_dims=spatial_dims)
    features, size = (torch.randn(2, 8, 5), (40,)) if spatial_dims == 1 else (torch.randn(2, 8, 5, 5), (40, 40))
    out = module(features, size)
    assert out.shape[0] == 2 and (out.dim() == 1 or out.shape[1] == node.num_outputs)


@pytest.mark.parametrize("option", options("loss"))
def test_every_loss_builds(option: str) -> None:
    assert isinstance(instantiate(OmegaConf.load(CONFIG_DIR / "loss" / f"{option}.yaml"), "loss"), torch.nn.Module)


@pytest.mark.parametrize("option", options("weighting"))
def test_every_weighting_builds(option: str) -> None:
    cfg = compose_config([f"weighting={option}"])
    weighting = instantiate(cfg.weighting, "weighting", task_names=list(cfg.task))
    assert isinstance(weighting, Weighting) and weighting.task_names == list(cfg.task)


@pytest.mark.parametrize("option", options("schedule"))
def test_every_schedule_builds(option: str) -> None:
    cfg = compose_config([f"schedule={option}"])
    with open_dict(cfg):
        for key in cfg.schedule.keys():
            if OmegaConf.is_missing(cfg.schedule, key):
                cfg.schedule[key] = REQUIRED_SCHEDULE_KEYS[key]
    schedule = instantiate(cfg.schedule, "schedule", task_names=list(cfg.task))
    assert schedule.factors(0, 0.0).shape == (len(cfg.task),)


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_constructs(option: str) -> None:
    cfg = compose_config([f"dataset={option}"])
    assert hasattr(instantiate(cfg.dataset, "dataset"), "build")


@pytest.mark.parametrize("option", options("optimizer"))
def test_every_optimizer_and_scheduler_builds(option: str) -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    for scheduler in options("scheduler"):
        cfg = compose_config([f"optimizer={option}", f"scheduler={scheduler}"])
        optimizer = instantiate(cfg.optimizer, "optimizer")(params)
        sched = instantiate(cfg.scheduler.build, "scheduler.build")(optimizer)
        assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
        assert cfg.scheduler.interval in ("step", "epoch")


def test_smoke_debug_preset_shrinks_the_run() -> None:
    cfg = compose_config(["debug=smoke"])
    assert cfg.trainer.max_steps == 2 and cfg.trainer.device == "cpu" and cfg.dataset.num_train == 32


def test_task_set_switches_dataset_but_command_line_wins() -> None:
    assert compose_config(["task=cls_seg"]).dataset._target_.endswith("mnist.MNIST")
    assert compose_config(["task=cls_seg", "dataset=fashion_mnist"]).dataset._target_.endswith("FashionMNIST")
    assert compose_config(["task=cls_seg"]).backbone.spatial_dims == 2


@pytest.mark.parametrize(
    ("package", "group"),
    [("weighting", "weighting"), ("data", "dataset"), ("heads", "heads"), ("backbones", "backbone"), ("losses", "loss"),
     ("schedules", "schedule")],
)
def test_every_component_module_has_a_yaml(package: str, group: str) -> None:
    """One Python file + one YAML: each component module is the _target_ of some YAML in its group."""
    targets = " ".join((CONFIG_DIR / group / f).read_text() for f in [p.name for p in (CONFIG_DIR / group).glob("*.yaml")])
    helpers = {"__init__", "base", "gradients", "gradient_based", "solvers", "qp", "hard", "image_family", "sources"}
    for module in (REPO / "mtl_train" / package).glob("*.py"):
        if module.stem not in helpers:
            assert f"mtl_train.{package}.{module.stem}." in targets, f"no configs/{group}/*.yaml targets {module}"


def test_cls_seg_anneals_the_learning_rate_to_zero_over_the_run() -> None:
    """task=cls_seg picks scheduler=cosine: lr_e = lr (1 + cos(pi e / E)) / 2 per epoch, 0 after the last one; a
    scheduler chosen on the command line replaces it."""
    cfg = compose_config(["task=cls_seg", "trainer.max_epochs=4"])
    assert cfg.scheduler.interval == "epoch"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = instantiate(cfg.scheduler.build, "scheduler.build")(optimizer)
    rates = []
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([(1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)], abs=1e-12)
    assert compose_config(["task=cls_seg", "scheduler=none"]).scheduler.build._target_.endswith("ConstantLR")
