"""2-step smoke trainings of every backbone x every task set it fits, on CPU: outputs written, every number finite.

test_train.py trains every task set on its default backbone; this file trains it on every other backbone that fits.

A backbone fits a task set when it reads inputs of the task set's dimensionality (1-D signals, 2-D images; the MLPs
flatten any input), and its features suit the task set's heads: flat features (MultiLeNet, the MLPs) only suit
classification (and regression) heads, and a task set with dense heads on them must stop with a ConfigError instead
of a shape error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_train import all_finite, read_csv_rows, smoke_config

from mtl_train.errors import ConfigError
from mtl_train.train import train

BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
# (input dims, feature dims) of the backbones whose YAML has no `spatial_dims` key (which gives both); None: any input
DIMS = {"transformer1d": (1, 1), "multi_lenet": (2, 0), "mlp": (None, 0), "mmoe_mlp": (None, 0), "torchvision": (2, 2),
        "cgc_mlp": (None, 0), "ple_mlp": (None, 0), "dselect_k_mlp": (None, 0)}
PENALTIES = {"soft1d": "soft_l2", "soft2d": "soft_l2"}  # the backbone's extra losses.csv column
# ResNet-18 (backbone=torchvision's default) takes ~16 s a smoke run on 2 CPU cores; test_torchvision_trunk.py runs it
SMOKE_OVERRIDES = {"torchvision": ["backbone.model=squeezenet1_1"]}


def backbone_dims(backbone: str) -> tuple[int | None, int]:
    if backbone in DIMS:
        return DIMS[backbone]
    dims = OmegaConf.load(CONFIG_DIR / "backbone" / f"{backbone}.yaml").spatial_dims
    return dims, dims


def task_set(task: str) -> tuple[str, bool]:
    """The task set's default backbone and whether all its heads classify."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[f"task={task}"], return_hydra_config=True)
    heads = [node.head._target_ for node in cfg.task.values()]
    return cfg.hydra.runtime.choices.backbone, all(h.endswith("ClassificationHead") for h in heads)


TASK_SETS = {task: task_set(task) for task in TASKS}


def pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(backbone, task set) pairs that train, and pairs whose flat features meet dense heads; a task set's default
    backbone is left to test_train.py, and a backbone fits when it reads inputs of its default backbone's dims."""
    trains, dense_on_flat = [], []
    for task, (default, classification_only) in TASK_SETS.items():
        for backbone in BACKBONES:
            backbone_input, features = backbone_dims(backbone)
            if backbone != default and backbone_input in (None, backbone_dims(default)[0]):
                (trains if features > 0 or classification_only else dense_on_flat).append((backbone, task))
    return trains, dense_on_flat


TRAINS, DENSE_ON_FLAT = pairs()


def backbone_config(task: str, weighting: str, backbone: str, output_dir: Path, data_root: Path):
    """test_train's smoke config with ``backbone``, and a 16-row ECG validation split (the smoke preset keeps 200)."""
    cfg = smoke_config(task, weighting, output_dir, data_root,
                       [f"backbone={backbone}", *SMOKE_OVERRIDES.get(backbone, [])])
    if "num_val" in cfg.dataset:
        cfg.dataset.num_val = 16
    return cfg


def test_every_backbone_trains_on_some_task_set() -> None:
    assert {backbone for backbone, _ in TRAINS} | {default for default, _ in TASK_SETS.values()} == set(BACKBONES)


@pytest.mark.parametrize(("backbone", "task"), TRAINS)
def test_smoke_train(backbone: str, task: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    cfg = backbone_config(task, "ew", backbone, tmp_path, tiny_fashion_root)
    summary = train(cfg)
    task_names = list(cfg.task)
    rows = read_csv_rows(tmp_path / "losses.csv")
    assert rows[0] == ["step", *task_names, *([PENALTIES[backbone]] if backbone in PENALTIES else [])]
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:])
    if backbone in PENALTIES:
        assert all(float(r[-1]) > 0 for r in rows[1:])  # independently initialised towers
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["metrics"]) == set(task_names) and all_finite(r["metrics"]) for r in records)
    assert summary["steps"] == 2 and all_finite(summary["final"])


@pytest.mark.parametrize(("backbone", "task"), DENSE_ON_FLAT)
def test_dense_heads_on_flat_features_are_a_config_error(backbone: str, task: str, tmp_path: Path,
                                                         tiny_fashion_root: Path) -> None:
    cfg = backbone_config(task, "ew", backbone, tmp_path, tiny_fashion_root)
    with pytest.raises(ConfigError, match="need spatial features"):
        train(cfg)


@pytest.mark.parametrize(("backbone", "task", "match"), [
    ("soft2d", "ecg_cls_rec", "spatial_dims=2 does not fit the data's 1-D inputs"),
    ("transformer1d", "cls_seg", "reads 1-D signals"),
    ("torchvision", "ecg_cls_rec", "backbone=torchvision reads images"),
])
def test_backbone_of_the_wrong_dimensionality_is_a_config_error(backbone: str, task: str, match: str, tmp_path: Path,
                                                                tiny_fashion_root: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        train(backbone_config(task, "ew", backbone, tmp_path, tiny_fashion_root))


@pytest.mark.parametrize("weighting", ["gradnorm", "pcgrad"])
@pytest.mark.parametrize("backbone", ["soft1d", "cross_stitch1d", "mmoe1d", "transformer1d"])
def test_shared_parameter_methods_train_on_every_sharing_scheme(backbone: str, weighting: str, tmp_path: Path,
                                                                tiny_fashion_root: Path) -> None:
    cfg = backbone_config("ecg_cls_rec", weighting, backbone, tmp_path, tiny_fashion_root)
    train(cfg)
    rows = read_csv_rows(tmp_path / "weights.csv")
    assert len(rows) == 3 and all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:])
