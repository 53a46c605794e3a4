"""backbone=mlp and backbone=mmoe_mlp for vector / tabular inputs: parameter partition and counts, split_depth,
flattening, the classification and regression heads on flat features, every per-task gradient method in both
modes for one step, config errors, and 2-step trainings of the ECG rhythm + heart-rate tasks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR
from omegaconf import OmegaConf
from test_train import all_finite, read_csv_rows, smoke_config

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.backbones.mlp import mlp
from mtl_train.backbones.mmoe import MixtureOfExperts, mmoe_mlp
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.heads.dense import DenseHead
from mtl_train.heads.reconstruction import ReconstructionHead
from mtl_train.heads.regression import RegressionHead
from mtl_train.model import MultiTaskModel
from mtl_train.train import train
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradnorm import GradNorm

TASKS = ["a", "b"]
# 10 input features, hidden [8, 4]: layer 1 = 10*8 + 8 weights and biases, layer 2 = 8*4 + 4
LAYER_1, LAYER_2 = 10 * 8 + 8, 8 * 4 + 4
# every weighting method taking per-task gradients, in either mode (params / rep), from its YAML's `mode` key
GRADIENT_METHODS = sorted(
    p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml")
    if OmegaConf.load(p).get("mode") in ("params", "rep")
)
# ECG rhythm (classification) and heart rate (regression): ecg_full less its per-sample tasks
VECTOR_TASKS = ["~task.waves", "~task.denoise"]


def count(params) -> int:
    return sum(p.numel() for p in params)


def tiny_mlp(**kwargs) -> HardSharedBackbone:
    torch.manual_seed(0)
    return mlp(TASKS, in_channels=10, input_size=(), hidden=(8, 4), **kwargs)


def tiny_mmoe(**kwargs) -> MixtureOfExperts:
    torch.manual_seed(0)
    return mmoe_mlp(TASKS, in_channels=10, input_size=(), num_experts=3, hidden=(8, 4), **kwargs)


def test_parameters_partition_into_shared_and_task_parameters() -> None:
    for backbone in (tiny_mlp(split_depth=1), tiny_mlp(norm="batch"), tiny_mmoe(norm="layer")):
        heads = {t: ClassificationHead(4, 0, num_classes=3, hidden=5) for t in TASKS}
        MultiTaskModel(backbone, heads)  # raises unless every parameter is shared or one task's
        own = [p for t in TASKS for p in backbone.task_parameters(t)]
        assert count(backbone.shared_parameters()) + count(own) == count(backbone.parameters())


@pytest.mark.parametrize("split_depth", [None, 1, 2])
def test_split_depth_shares_the_first_layers_and_copies_the_rest(split_depth: int | None) -> None:
    backbone = tiny_mlp(split_depth=split_depth)
    layers = [LAYER_1, LAYER_2]
    shared = 2 if split_depth is None else split_depth
    assert count(backbone.shared_parameters()) == sum(layers[:shared])
    assert count(backbone.task_parameters("a")) == count(backbone.task_parameters("b")) == sum(layers[shared:])
    assert count(backbone.parameters()) == sum(layers[:shared]) + 2 * sum(layers[shared:])
    assert backbone.last_shared_layer() is backbone.shared[-1][1 if shared == 1 else 0]


def test_layers_are_linear_norm_relu_dropout() -> None:
    backbone = tiny_mlp(norm="layer", dropout=0.25)
    first, second = backbone.shared
    assert [type(m).__name__ for m in first] == ["Flatten", "Linear", "LayerNorm", "ReLU", "Dropout"]
    assert [type(m).__name__ for m in second] == ["Linear", "LayerNorm", "ReLU", "Dropout"]
    assert first[4].p == 0.25
    assert [type(m).__name__ for m in tiny_mlp(norm="batch").shared[1]] == ["Linear", "RowBatchNorm", "ReLU"]
    # LayerNorm / BatchNorm add a weight and a bias per unit
    assert count(tiny_mlp(norm="layer").parameters()) == LAYER_1 + LAYER_2 + 2 * (8 + 4)
    assert count(tiny_mlp(norm="batch").parameters()) == LAYER_1 + LAYER_2 + 2 * (8 + 4)


@pytest.mark.parametrize(("in_channels", "input_size"), [(10, ()), (2, (5,)), (1, (2, 5))])
def test_any_input_is_flattened_to_a_feature_vector(in_channels: int, input_size: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    backbone = mlp(TASKS, in_channels=in_channels, input_size=input_size, hidden=(8, 4))
    assert backbone.shared[0][1].in_features == 10
    x = torch.randn(6, in_channels, *input_size)
    z = backbone.encode(x)
    assert z.shape == (6, 4) and backbone.branch("a", z, x).shape == (6, 4)
    assert (backbone.out_channels, backbone.spatial_dims) == (4, 0)
    # the same values, as a table, give the same features
    assert torch.equal(z, backbone.encode(x.reshape(6, 10)))


def test_one_identity_layer_is_a_relu() -> None:
    backbone = mlp(["a"], in_channels=3, input_size=(), hidden=(3,))
    linear = backbone.shared[0][1]
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3))
        linear.bias.fill_(0.5)
    x = torch.tensor([[-2.0, 0.0, 1.0]])
    assert backbone.encode(x).tolist() == [[0.0, 0.5, 1.5]]


def test_batch_norm_names_the_fix_for_a_training_batch_of_one_row() -> None:
    backbone = tiny_mlp(norm="batch")
    with pytest.raises(ConfigError, match="backbone.norm=batch cannot normalise a training batch of one row"):
        backbone.encode(torch.randn(1, 10))
    norm = backbone.shared[0][2]
    assert isinstance(norm, torch.nn.BatchNorm1d)
    x = torch.tensor([[1.0], [3.0]]).expand(2, 8)
    assert torch.allclose(norm(x), torch.tensor([[-1.0], [1.0]]).expand(2, 8), atol=1e-3)  # (x - 2) / 1
    assert backbone.eval().encode(torch.randn(1, 10)).shape == (1, 4)  # running statistics in eval mode


def test_mmoe_mlp_mixes_flat_experts_by_the_gates() -> None:
    backbone = tiny_mmoe().eval()
    x = torch.randn(5, 10)
    z = backbone.encode(x)
    assert z.shape == (5, 3, 4) and (backbone.out_channels, backbone.spatial_dims) == (4, 0)
    for task in TASKS:
        gates = torch.softmax(backbone.gates[task](x), dim=1)
        expected = sum(gates[:, i : i + 1] * backbone.experts[i](x) for i in range(3))
        assert torch.allclose(backbone.branch(task, z, x), expected, atol=1e-6)
    # three experts of LAYER_1 + LAYER_2 shared; a gate Linear(10 -> 3) per task
    assert count(backbone.shared_parameters()) == 3 * (LAYER_1 + LAYER_2)
    assert count(backbone.task_parameters("a")) == 10 * 3 + 3
    assert [m.in_features for m in backbone.last_shared_layer()] == [8, 8, 8]


def test_heads_read_flat_features() -> None:
    torch.manual_seed(0)
    features = torch.randn(4, 6)
    regression = RegressionHead(6, 0, hidden=5, offset=80.0, scale=30.0)
    with torch.no_grad():
        regression.mlp[2].weight.zero_()
        regression.mlp[2].bias.fill_(1.0)
    assert regression(features, ()).tolist() == [110.0] * 4  # offset + scale * 1
    assert RegressionHead(6, 0, num_outputs=2)(features, ()).shape == (4, 2)
    assert ClassificationHead(6, 0, num_classes=3, hidden=5)(features, ()).shape == (4, 3)
    # a flat (B, C) vector reads as the same features as (B, C, 1)
    assert torch.equal(regression(features, ()), regression(features[:, :, None], (1,)))


def model_and_context(backbone) -> tuple[MultiTaskModel, torch.Tensor, StepContext]:
    """Two classification heads on ``backbone``, and (losses, context) of one batch of 8 rows of 10 features."""
    heads = {t: ClassificationHead(backbone.out_channels, 0, num_classes=3, hidden=5) for t in TASKS}
    model = MultiTaskModel(backbone, heads)
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])

    def recompute_losses() -> torch.Tensor:
        with torch.no_grad():
            again = model(x)
            return torch.stack([torch.nn.functional.cross_entropy(again[t], y) for t in TASKS])

    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, inputs=x, shared_representation=z,
                      outputs=outputs, class_logits={t: True for t in TASKS}, recompute_losses=recompute_losses)
    return model, losses, ctx


@pytest.mark.parametrize("mode", ["params", "rep"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("build", [tiny_mlp, tiny_mmoe], ids=["mlp", "mmoe_mlp"])
def test_every_gradient_method_takes_a_step(build, method: str, mode: str) -> None:
    model, losses, ctx = model_and_context(build())
    cfg = OmegaConf.create({"seed": 0, "weighting": OmegaConf.load(CONFIG_DIR / "weighting" / f"{method}.yaml")})
    cfg.weighting.mode = mode
    weighting = instantiate(cfg.weighting, "weighting", task_names=TASKS)
    weights = weighting.backward(losses, ctx)
    assert weights.shape == (2,) and torch.isfinite(weights).all()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in model.shared_parameters())


@pytest.mark.parametrize("build", [tiny_mlp, tiny_mmoe], ids=["mlp", "mmoe_mlp"])
def test_gradnorm_on_the_last_shared_layer(build) -> None:
    model, losses, ctx = model_and_context(build())
    method = GradNorm(TASKS)
    assert method.backward(losses, ctx).tolist() == [1.0, 1.0]
    assert method.weights.grad is not None and torch.isfinite(method.weights.grad).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(hidden=()), "backbone.hidden must list at least one positive layer width"),
    (dict(hidden=(8, 0)), "backbone.hidden must list"),
    (dict(norm="bn"), "backbone.norm must be one of none, layer, batch"),
    (dict(dropout=1.0), r"backbone.dropout must be in \[0, 1\)"),
    (dict(split_depth=3), "backbone.split_depth must be between 1 and the number of blocks"),
])
def test_bad_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        mlp(TASKS, in_channels=10, input_size=(), **{"hidden": (8, 4), **kwargs})


def test_mmoe_mlp_needs_an_expert() -> None:
    with pytest.raises(ConfigError, match="backbone.num_experts must be >= 1, got 0"):
        mmoe_mlp(TASKS, in_channels=10, input_size=(), num_experts=0)


@pytest.mark.parametrize("backbone", ["mlp", "mmoe_mlp"])
def test_smoke_train_on_ecg_rhythm_and_heart_rate(backbone: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    cfg = smoke_config("ecg_full", "ew", tmp_path, tiny_fashion_root, [f"backbone={backbone}", *VECTOR_TASKS])
    assert list(cfg.task) == ["rhythm", "heart_rate"]
    cfg.dataset.num_val = 16  # the smoke preset keeps 200 ECG validation rows
    summary = train(cfg)
    rows = read_csv_rows(tmp_path / "losses.csv")
    assert rows[0] == ["step", "rhythm", "heart_rate"] and [r[0] for r in rows[1:]] == ["1", "2"]
    assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:])
    assert summary["steps"] == 2 and all_finite(summary["final"])


@pytest.mark.parametrize("head", [lambda: DenseHead(4, 0, num_outputs=4), lambda: ReconstructionHead(4, 0, 1)])
def test_dense_heads_on_mlp_features_are_config_errors(head) -> None:
    """A task set with such a head stops at this error (test_backbone_smoke.py trains ecg_full with backbone=mlp)."""
    with pytest.raises(ConfigError, match="need spatial features .* backbone=multi_lenet, mlp or mmoe_mlp"):
        head()
