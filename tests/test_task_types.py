"""Task types (mtl_train.task_types): a task node's ``type`` fills its head, loss and metric; targets that do not fit
the type are one message; and a user's task set declaring tasks only by type trains through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli_in_process
from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_train.cli import config_dir
from mtl_train.config_checks import check_config
from mtl_train.errors import ConfigError
from mtl_train.heads.binary import BinaryHead
from mtl_train.heads.classification import ClassificationHead
from mtl_train.heads.dense import DenseHead
from mtl_train.heads.reconstruction import ReconstructionHead
from mtl_train.heads.regression import RegressionHead
from mtl_train.losses.binary_cross_entropy import BinaryCrossEntropy
from mtl_train.losses.cross_entropy import CrossEntropy
from mtl_train.losses.focal import FocalLoss
from mtl_train.metrics.binary import BinaryMetrics, MultiLabelMetrics
from mtl_train.metrics.classification import ClassificationMetrics
from mtl_train.metrics.reconstruction import ReconstructionMetrics
from mtl_train.metrics.regression import RegressionMetrics
from mtl_train.metrics.segmentation import SegmentationMetrics
from mtl_train.task_types import TASK_TYPES, config_tree, fill_task_types, type_problem, typed_task_node
from mtl_train.tasks import build_tasks
from mtl_train.utils.instantiate import instantiate

BUILT = {
    "multiclass": (ClassificationHead, CrossEntropy, ClassificationMetrics),
    "binary": (BinaryHead, BinaryCrossEntropy, BinaryMetrics),
    "multilabel": (BinaryHead, BinaryCrossEntropy, MultiLabelMetrics),
    "regression": (RegressionHead, torch.nn.MSELoss, RegressionMetrics),
    "segmentation": (DenseHead, CrossEntropy, SegmentationMetrics),
    "dense_regression": (ReconstructionHead, torch.nn.MSELoss, RegressionMetrics),
    "reconstruction": (ReconstructionHead, torch.nn.MSELoss, ReconstructionMetrics),
}
"""The head, loss and metric classes each type builds."""


def task_cfg(**nodes: dict) -> DictConfig:
    """``cfg.task`` holding ``nodes``, in struct mode as Hydra gives it."""
    cfg = OmegaConf.create({"task": nodes})
    OmegaConf.set_struct(cfg, True)
    return cfg.task


def test_every_type_is_in_the_table() -> None:
    assert set(TASK_TYPES) == set(BUILT)


@pytest.mark.parametrize("name", list(BUILT))
def test_a_typed_node_builds_its_types_head_loss_and_metric(name: str) -> None:
    tasks = task_cfg(t={"target": "y", "type": name, "num_outputs": 3})
    [task] = build_tasks(tasks, ["y"])
    head_class, loss_class, metric_class = BUILT[name]
    assert type(task.loss) is loss_class and type(task.metric) is metric_class and task.task_type == name
    head = instantiate(tasks.t.head, "task.t.head", in_channels=8, spatial_dims=1)
    assert type(head) is head_class
    output = head(torch.randn(2, 8, 5), (40,))
    assert output.shape[0] == 2 and (output.dim() == 1 or output.shape[1] == 3)  # the task's num_outputs


@pytest.mark.parametrize("settings", [{}, {"num_outputs": 1}, {"num_outputs": 2}], ids=["none", "1", "2"])
def test_binary_needs_no_num_outputs_and_gives_one_logit_per_sample(settings: dict) -> None:
    tasks = task_cfg(churn={"target": "y", "type": "binary", **settings})
    build_tasks(tasks, ["y"])
    head = instantiate(tasks.churn.head, "task.churn.head", in_channels=8, spatial_dims=0)
    assert head(torch.randn(5, 8), ()).shape == (5,)


def test_regression_defaults_to_one_value_per_sample() -> None:
    tasks = task_cfg(age={"target": "y", "type": "regression"})
    build_tasks(tasks, ["y"])
    assert tasks.age.num_outputs == 1
    head = instantiate(tasks.age.head, "task.age.head", in_channels=8, spatial_dims=0)
    assert head(torch.randn(5, 8), ()).shape == (5,)


def test_an_explicit_component_wins_and_settings_alone_are_merged_into_the_types() -> None:
    tasks = task_cfg(
        cls={"target": "y", "type": "multiclass", "num_outputs": 4,
             "loss": {"_target_": "mtl_train.losses.focal.FocalLoss", "gamma": 1.0}},
        churn={"target": "z", "type": "binary", "loss": {"pos_weight": 3.0}},
        rec={"target": "x", "type": "reconstruction", "num_outputs": 1, "metric": {"data_range": 2.0}},
    )
    cls, churn, rec = build_tasks(tasks, ["x", "y", "z"])
    assert type(cls.loss) is FocalLoss and cls.loss.gamma == 1.0
    assert type(churn.loss) is BinaryCrossEntropy and churn.loss.pos_weight.tolist() == [3.0]
    assert type(rec.metric) is ReconstructionMetrics and rec.metric.data_range == 2.0


def test_a_node_without_a_type_is_left_as_it_is() -> None:
    node = {"target": "y", "num_outputs": 2, "head": {"_target_": "x.Head"}, "loss": {"_target_": "x.Loss"},
            "metric": {"_target_": "x.Metric"}}
    tasks = task_cfg(t=node)
    fill_task_types(tasks)
    assert OmegaConf.to_container(tasks) == {"t": node}


def test_filling_is_idempotent_and_the_checks_copy_leaves_the_node_unchanged() -> None:
    tasks = task_cfg(t={"target": "y", "type": "multilabel", "num_outputs": 3})
    filled = typed_task_node("t", tasks.t)
    assert "head" not in tasks.t and filled.head.num_labels == 3 and filled.metric.num_labels == 3
    fill_task_types(tasks)
    once = OmegaConf.to_container(tasks)
    fill_task_types(tasks)
    assert OmegaConf.to_container(tasks) == once == {"t": OmegaConf.to_container(filled)}


def test_an_unknown_type_lists_the_types() -> None:
    with pytest.raises(ConfigError) as error:
        build_tasks(task_cfg(t={"target": "y", "type": "binnary"}), ["y"])
    assert str(error.value) == ("task.t.type='binnary' is not a task type; valid types: multiclass, binary, "
                                "multilabel, regression, segmentation, dense_regression, reconstruction")


def test_a_type_without_its_required_setting_says_which() -> None:
    with pytest.raises(ConfigError) as error:
        build_tasks(task_cfg(t={"target": "y", "type": "multiclass"}), ["y"])
    assert str(error.value) == ("task.t.type=multiclass needs task.t.num_outputs (the number of classes); add it to "
                                "the task node, e.g. num_outputs: 3")


def test_the_types_read_the_packages_config_folder() -> None:
    assert config_tree() == Path(config_dir())


# --- the config checks see the filled nodes ------------------------------------------------------------------


def with_tasks(nodes: dict, tmp_path: Path) -> DictConfig:
    """The default run's config with ``cfg.task`` replaced by ``nodes``."""
    cfg = compose_config([], output_dir=tmp_path)
    with open_dict(cfg):
        cfg.task = nodes
    return cfg


def test_the_config_checks_pass_typed_nodes(tmp_path: Path) -> None:
    check_config(with_tasks({"a": {"target": "y", "type": "binary"},
                             "b": {"target": "z", "type": "segmentation", "num_outputs": 4}}, tmp_path))


@pytest.mark.parametrize(("node", "message"), [
    ({"target": "y", "type": "binary", "loss": {"gamma": 2.0}},
     "task.a.loss.gamma is not a setting of BinaryCrossEntropy; valid keys: pos_weight, reduction"),
    ({"target": "y", "type": "binary", "loss": {"pos_weight": "high"}},
     "task.a.loss.pos_weight='high' must be a float (number) or a list of numbers or null"),
    ({"target": "y", "type": 3}, "task.a.type=3 is not a task type; valid types: multiclass, binary"),
    ({"target": "y"}, "task.a lacks head, loss, metric: every task needs a target, and a type (multiclass, binary"),
], ids=["unknown loss setting", "mistyped loss setting", "type not a string", "neither type nor components"])
def test_the_config_checks_report_a_typed_nodes_mistakes(node: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        check_config(with_tasks({"a": node}, tmp_path))
    assert str(error.value).startswith(message)


# --- targets that do not fit the type ------------------------------------------------------------------------


@pytest.mark.parametrize(("type_name", "target", "message"), [
    ("binary", torch.tensor([0.0, 2.5, 1.0]),
     "task.t.type=binary needs 0/1 labels (N,), but target 'y' holds 2.5 (in the val split); use type regression"),
    ("multiclass", torch.tensor([0.0, 1.0, 1.0]),
     "task.t.type=multiclass needs class indices (N,), but target 'y' holds floats (torch.float32); use type binary or "
     "regression"),
    ("regression", torch.tensor([0, 3, 1]),
     "task.t.type=regression needs values (N,) or (N, D), but target 'y' holds integers (torch.int64); save it as a "
     "float array; use type multiclass"),
    ("multilabel", torch.tensor([0, 1, 1]),
     "task.t.type=multilabel needs 0/1 labels (N, L), but target 'y' has shape (N,); use type multiclass or binary"),
    ("reconstruction", torch.zeros(3, 4, dtype=torch.int64),
     "task.t.type=reconstruction needs values (N, C, *S), but target 'y' has shape (N, 4); use type multilabel or "
     "segmentation"),
], ids=["binary on floats", "multiclass on floats", "regression on integers", "multilabel on a vector",
        "reconstruction on a matrix"])
def test_a_target_that_does_not_fit_the_type_is_one_line(type_name: str, target: torch.Tensor, message: str) -> None:
    splits = {"train": target[:1], "val": target, "test": target}
    assert type_problem("t", type_name, "y", splits, None) == message


def test_missing_labels_are_not_read_as_labels() -> None:
    splits = {"train": torch.tensor([0, 1, -1]), "val": torch.tensor([1, 0]), "test": torch.tensor([-1, 0, 1])}
    assert type_problem("t", "binary", "y", splits, -1.0) is None
    assert type_problem("t", "binary", "y", splits, None).startswith("task.t.type=binary needs 0/1 labels (N,), but "
                                                                      "target 'y' holds -1 (in the train split)")


# --- end to end ----------------------------------------------------------------------------------------------

TYPED_TASK_SET = """\
# @package _global_
defaults:
  - _self_
  - override /dataset: files
  - override /backbone: mlp

task:
  churn: {target: churn, type: binary}
  tags: {target: tags, type: multilabel, num_outputs: 3}
  total: {target: total, type: regression}
"""


def write_easy_problem(path: Path, rows: int = 600) -> None:
    """An .npz of 8 standard-normal features and three targets read off them: ``churn`` (x_0 > 0, int64 0/1),
    ``tags`` (x_1, x_2, x_3 > 0: (N, 3) int64 0/1) and ``total`` (the sum of the features, float32)."""
    x = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    np.savez(path, inputs=x, churn=(x[:, 0] > 0).astype(np.int64), tags=(x[:, 1:4] > 0).astype(np.int64),
             total=x.sum(axis=1))


def test_a_task_set_of_types_only_trains_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_easy_problem(tmp_path / "data.npz")
    (tmp_path / "configs" / "task").mkdir(parents=True)
    (tmp_path / "configs" / "task" / "typed.yaml").write_text(TYPED_TASK_SET)
    status = run_cli_in_process([
        "--config-dir", str(tmp_path / "configs"), "task=typed", f"dataset.path={tmp_path / 'data.npz'}",
        "dataset.targets={churn: churn, tags: tags, total: total}", "trainer.device=cpu", "trainer.max_epochs=5",
        "trainer.plots=false", "trainer.progress=none", f"hydra.run.dir={tmp_path / 'run'}",
    ], monkeypatch)
    assert status == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["primary_metric"] == {"churn": "auroc", "tags": "ap", "total": "mae"}
    churn, tags = summary["final"]["test"]["churn"], summary["final"]["test"]["tags"]
    assert all(0.0 <= churn[key] <= 1.0 for key in ("auroc", "ap", "f1", "accuracy"))
    assert all(0.0 <= tags[key] <= 1.0 for key in ("auroc", "ap", "macro_f1", "micro_f1", "accuracy"))
    # chance: AUROC 0.5, AP the share of positives (about 0.5); each label is the sign of one input feature
    assert churn["auroc"] > 0.9 and churn["ap"] > 0.9 and churn["f1"] > 0.7
    assert tags["auroc"] > 0.8 and tags["ap"] > 0.8 and tags["macro_f1"] > 0.65
    assert summary["final"]["test"]["total"]["rmse"] < 2.0  # the sum of 8 N(0, 1) values has std 2.83
