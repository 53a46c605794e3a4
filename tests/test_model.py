"""MultiTaskModel: the shared/task parameter partition is checked at construction, and normalisation statistics can
be frozen for an extra training-mode forward."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIG_DIR
from omegaconf import OmegaConf
from torch import Tensor, nn

from mtl_train.backbones.base import Backbone
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.utils.instantiate import instantiate

TASKS = ["a", "b", "c"]
BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml"))


class ToyBackbone(Backbone):
    """A shared Linear trunk and one Linear per task, whose parameter lists ``lists`` can get wrong:
    ``"correct"``, ``"forgets_b"`` (task b's bias is in no list), ``"twice"`` (the trunk weight is shared and
    also task a's) or ``"foreign"`` (shared lists a tensor that is not the model's)."""

    out_channels = 4
    spatial_dims = 0

    def __init__(self, lists: str) -> None:
        super().__init__()
        self.lists = lists
        self.trunk = nn.Linear(3, 4)
        self.branches = nn.ModuleDict({t: nn.Linear(4, 4) for t in TASKS})
        self.stray = nn.Parameter(torch.zeros(2))

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        return self.branches[task](z)

    def shared_parameters(self) -> list[nn.Parameter]:
        shared = [*self.trunk.parameters(), self.stray]
        return [*shared, nn.Parameter(torch.zeros(5))] if self.lists == "foreign" else shared

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        params = list(self.branches[task].parameters())
        if self.lists == "forgets_b" and task == "b":
            return params[:1]
        if self.lists == "twice" and task == "a":
            return [*params, self.trunk.weight]
        return params

    def last_shared_layer(self) -> nn.Module:
        return self.trunk


def toy_model(lists: str) -> MultiTaskModel:
    return MultiTaskModel(ToyBackbone(lists), {t: ClassificationHead(4, 0, num_classes=2, hidden=3) for t in TASKS})


def test_a_correct_partition_builds() -> None:
    model = toy_model("correct")
    assert len(model.shared_parameters()) + sum(len(model.task_parameters(t)) for t in TASKS) == len(
        list(model.parameters())) == 3 + 3 * 2 + 3 * 4


@pytest.mark.parametrize(("lists", "match"), [
    ("forgets_b", r"missing: backbone\.branches\.b\.bias\)"),
    ("twice", r"listed more than once: backbone\.trunk\.weight\)"),
    ("foreign", r"not parameters of the model: \(5,\)\)"),
])
def test_a_broken_partition_is_a_config_error_naming_the_backbone_and_parameters(lists: str, match: str) -> None:
    with pytest.raises(ConfigError, match=r"backbone: ToyBackbone\.shared_parameters\(\) and task_parameters\(task\) "
                                          rf"for the tasks \['a', 'b', 'c'\] .*\({match}; fix ToyBackbone's"):
        toy_model(lists)


def shipped_backbone(name: str) -> Backbone:
    """Backbone ``name`` as its config builds it, for three tasks, on 1-channel 256-sample signals or 28x28 images."""
    node = OmegaConf.load(CONFIG_DIR / "backbone" / f"{name}.yaml")
    input_size = (28, 28) if name.endswith("2d") or name in ("multi_lenet", "torchvision") else (256,)
    return instantiate(node, "backbone", task_names=TASKS, in_channels=1, input_size=input_size)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_shipped_backbone_partitions_its_parameters(name: str) -> None:
    backbone = shipped_backbone(name)
    width, dims = backbone.out_channels, backbone.spatial_dims
    heads = {t: ClassificationHead(width, dims, num_classes=2, hidden=3) for t in TASKS}
    model = MultiTaskModel(backbone, heads)  # raises on a broken partition
    listed = [*model.shared_parameters(), *(p for t in TASKS for p in model.task_parameters(t))]
    assert sorted(map(id, listed)) == sorted(map(id, model.parameters()))


def batchnorm_model() -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = ToyBackbone("correct")
    backbone.trunk = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return MultiTaskModel(backbone, {t: ClassificationHead(4, 0, num_classes=2, hidden=3) for t in TASKS})


def test_frozen_normalization_statistics_normalises_by_the_batch_and_keeps_the_running_statistics() -> None:
    model, twin = batchnorm_model(), batchnorm_model()
    norm = model.backbone.trunk[1]
    x = torch.randn(6, 3) * 3 + 1
    with torch.no_grad():
        expected = twin.train()(x)  # an ordinary training forward: batch statistics, running ones updated
        with model.train().frozen_normalization_statistics():
            outputs = model(x)
    assert all(torch.equal(outputs[t], expected[t]) for t in TASKS)
    assert torch.equal(norm.running_mean, torch.zeros(4)) and torch.equal(norm.running_var, torch.ones(4))
    assert int(norm.num_batches_tracked) == 0 and norm.track_running_stats
    assert not torch.equal(twin.backbone.trunk[1].running_mean, torch.zeros(4))  # the twin's did move
    with torch.no_grad(), model.eval().frozen_normalization_statistics():
        evaluated = model.backbone.trunk(x)
    # eval mode: the untouched running statistics, mean 0 and variance 1
    hand = model.backbone.trunk[0](x) / torch.sqrt(torch.tensor(1.0 + norm.eps)) * norm.weight + norm.bias
    assert torch.allclose(evaluated, hand, atol=1e-6)
