"""Weightings driven by predictions (max-entropy, MC dropout) and by validation metrics (performance)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.heads.dense import DenseHead
from mtl_train.heads.regression import RegressionHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.max_entropy import MaxEntropyWeighting, mean_entropy
from mtl_train.weighting.mc_dropout import MCDropoutWeighting
from mtl_train.weighting.performance import PerformanceWeighting


def two_losses() -> tuple[torch.nn.Parameter, torch.Tensor]:
    """theta = (1, 2); L_a = theta_0^2 (grad (2, 0)); L_b = 3 * theta_1 (grad (0, 3))."""
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    return theta, torch.stack([theta[0] ** 2, 3 * theta[1]])


def logits_of(*distributions: list[float]) -> torch.Tensor:
    """Logits ``(B, C)`` whose softmax is the given distributions."""
    return torch.log(torch.tensor(distributions))


# ---------------------------------------------------------------------------------------------- max entropy


def test_max_entropy_worked_example() -> None:
    """H([0.7, 0.3]) = 0.6109, H([0.9, 0.1]) = 0.3251 nats -> weights 0.6527 / 0.3473 (the reference's
    0.652 / 0.348, which truncates rather than rounds); gradients scaled by them."""
    theta, losses = two_losses()
    ctx = StepContext(model=None, step=0, scale=lambda loss: loss,
                      outputs={"a": logits_of([0.7, 0.3]), "b": logits_of([0.9, 0.1])},
                      class_logits={"a": True, "b": True})
    weights = MaxEntropyWeighting(["a", "b"]).backward(losses, ctx)
    assert weights.tolist() == pytest.approx([0.6527, 0.3473], abs=5e-5)
    assert weights.sum().item() == pytest.approx(1.0)
    assert not weights.requires_grad
    assert theta.grad.tolist() == pytest.approx([2.0 * weights[0].item(), 3.0 * weights[1].item()])


def test_max_entropy_on_segmentation_shaped_outputs() -> None:
    """(B, C, H, W) logits: entropy per pixel, averaged over batch and pixels. Half the pixels uniform over
    4 classes (H = log 4), half certain (H = 0): mean log(4) / 2. A classifier uniform over 4 classes: log 4.
    Weights (0.5 log 4, log 4) / 1.5 log 4 = (1/3, 2/3)."""
    seg = torch.zeros(2, 4, 3, 6)
    seg[:, 0, :, 3:] = 1e4  # right half: all mass on class 0
    cls = torch.zeros(5, 4)
    assert mean_entropy(seg).item() == pytest.approx(math.log(4) / 2, rel=1e-5)
    ctx = StepContext(model=None, step=0, scale=lambda loss: loss, outputs={"cls": cls, "seg": seg},
                      class_logits={"cls": True, "seg": True})
    _, losses = two_losses()
    weights = MaxEntropyWeighting(["seg", "cls"]).backward(losses, ctx)
    assert weights.tolist() == pytest.approx([1 / 3, 2 / 3], rel=1e-5)


def test_max_entropy_all_confident_tasks_get_uniform_weights() -> None:
    outputs = {"a": torch.tensor([[1e4, 0.0]]), "b": torch.tensor([[0.0, 1e4, 0.0]])}
    ctx = StepContext(model=None, step=0, scale=lambda loss: loss, outputs=outputs, class_logits={"a": True, "b": True})
    _, losses = two_losses()
    assert MaxEntropyWeighting(["a", "b"]).backward(losses, ctx).tolist() == pytest.approx([0.5, 0.5])


def test_max_entropy_rejects_a_value_task() -> None:
    ctx = StepContext(model=None, step=0, scale=lambda loss: loss,
                      outputs={"rhythm": torch.zeros(2, 4), "denoise": torch.zeros(2, 1, 16)},
                      class_logits={"rhythm": True, "denoise": False})
    _, losses = two_losses()
    with pytest.raises(ConfigError, match="task 'denoise' predicts values .* task=cls_seg"):
        MaxEntropyWeighting(["rhythm", "denoise"]).backward(losses, ctx)


def test_max_entropy_rejects_bad_eps() -> None:
    with pytest.raises(ConfigError, match="weighting.eps"):
        MaxEntropyWeighting(["a"], eps=0.0)


# ---------------------------------------------------------------------------------------------- MC dropout


def value_model(amplification: float = 10.0) -> MultiTaskModel:
    """Two scalar-regression tasks with identical task blocks (one shared block, one per task, with BatchNorm)
    and identical heads, except that b's output is scaled by ``amplification``: Var_b = amplification^2 Var_a."""
    torch.manual_seed(0)
    backbone = hard_cnn(["a", "b"], in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3, split_depth=1)
    head_a = RegressionHead(4, 1, hidden=8)
    head_b = copy.deepcopy(head_a)
    head_b.scale = amplification
    return MultiTaskModel(backbone, {"a": head_a, "b": head_b})


def model_context(model: MultiTaskModel, x: torch.Tensor, class_logits: dict[str, bool]) -> tuple[StepContext, torch.Tensor]:
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([outputs[t].float().square().mean() for t in model.task_names])
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, inputs=x, shared_representation=z, outputs=outputs,
                      class_logits=class_logits)
    return ctx, losses


def test_mc_dropout_weights_the_task_whose_head_amplifies_noise() -> None:
    model = value_model(amplification=10.0)
    ctx, losses = model_context(model, torch.randn(8, 1, 16), {"a": False, "b": False})
    weights = MCDropoutWeighting(["a", "b"], num_samples=6, dropout=0.3).backward(losses, ctx)
    assert weights.tolist() == pytest.approx([1 / 101, 100 / 101], rel=1e-3)
    assert weights.sum().item() == pytest.approx(1.0)
    assert all(p.grad is not None for p in model.heads.parameters())


def test_mc_dropout_without_dropout_has_zero_variance_and_uniform_weights() -> None:
    model = value_model()
    ctx, _ = model_context(model, torch.randn(8, 1, 16), {"a": False, "b": False})
    method = MCDropoutWeighting(["a", "b"], num_samples=4, dropout=0.0)
    assert method.predictive_variances(ctx).tolist() == [0.0, 0.0]
    _, losses = model_context(model, torch.randn(8, 1, 16), {"a": False, "b": False})
    assert method.backward(losses, ctx).tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("training", [True, False])
def test_mc_dropout_leaves_the_model_mode_and_buffers_as_they_were(training: bool) -> None:
    model = value_model()
    model.train(training)
    ctx, _ = model_context(model, torch.randn(8, 1, 16), {"a": False, "b": False})
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    MCDropoutWeighting(["a", "b"], num_samples=3).predictive_variances(ctx)
    assert all(m.training == training for m in model.modules())
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name  # BatchNorm running stats of the task blocks untouched


def test_mc_dropout_on_class_logits_and_dense_outputs() -> None:
    """Classification + 1-D segmentation: probabilities' variances lie in [0, 1/4]; the dense head is decoded
    at the input's length, read from the dense output."""
    torch.manual_seed(0)
    backbone = hard_cnn(["cls", "seg"], in_channels=1, input_size=(18,), spatial_dims=1, channels=(4, 4), kernel_size=3)
    heads = {"cls": ClassificationHead(4, 1, num_classes=3, hidden=8), "seg": DenseHead(4, 1, num_outputs=5, hidden=8)}
    model = MultiTaskModel(backbone, heads)
    x = torch.randn(4, 1, 18)  # trunk: 18 -> 9 -> 4; head: 4 -> 8 -> 16, resized to the input_size it is given
    ctx, losses = model_context(model, x, {"cls": True, "seg": True})
    method = MCDropoutWeighting(["cls", "seg"], num_samples=4, dropout=0.5)
    variances = method.predictive_variances(ctx)
    assert ((variances > 0) & (variances <= 0.25)).all()
    weights = method.backward(losses, ctx)
    assert weights.sum().item() == pytest.approx(1.0) and (weights > 0).all()


@pytest.mark.parametrize(("kwargs", "key"), [({"num_samples": 1}, "num_samples"), ({"dropout": 1.0}, "dropout"),
                                             ({"eps": 0.0}, "eps")])
def test_mc_dropout_rejects_bad_settings(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"weighting.{key}"):
        MCDropoutWeighting(["a", "b"], **kwargs)


# ---------------------------------------------------------------------------------------------- performance


def metrics(a: float, b: float) -> dict[str, dict[str, float]]:
    return {"a": {"accuracy": a, "macro_f1": 0.0, "loss": 1.0}, "b": {"miou": b, "pixel_accuracy": 1.0, "loss": 2.0}}


def test_performance_is_uniform_before_the_first_evaluation() -> None:
    theta, losses = two_losses()
    weights = PerformanceWeighting(["a", "b", "c"]).backward(torch.cat([losses, losses[:1]]), StepContext(model=None, step=0, scale=lambda loss: loss))
    assert weights.tolist() == pytest.approx([1 / 3] * 3)
    assert theta.grad.tolist() == pytest.approx([2 * 2 / 3, 3 / 3])


def test_performance_direct_worked_example() -> None:
    """KPIs 0.8 / 0.6 -> 0.571 / 0.429 (accuracy for a, miou for b: the first auto metric each task has)."""
    method = PerformanceWeighting(["a", "b"], mode="direct")
    method.after_evaluation(metrics(0.8, 0.6))
    theta, losses = two_losses()
    weights = method.backward(losses, StepContext(model=None, step=0, scale=lambda loss: loss))
    assert weights.tolist() == pytest.approx([0.571, 0.429], abs=5e-4)
    assert theta.grad.tolist() == pytest.approx([2 * 0.8 / 1.4, 3 * 0.6 / 1.4], rel=1e-5)


def test_performance_inverse_worked_example() -> None:
    """gamma = 1, KPIs (0.8, 0.6): w proportional to (0.2 * 0.2231, 0.4 * 0.5108) -> (0.1793, 0.8207)."""
    method = PerformanceWeighting(["a", "b"], mode="inverse", gamma=1.0)
    method.after_evaluation(metrics(0.8, 0.6))
    assert method.weights.tolist() == pytest.approx([0.1793, 0.8207], abs=5e-5)


def test_performance_inverse_clips_the_kpis() -> None:
    """KPI 0 is clipped to 0.1 (finite weight) and 1 to 0.99 (weight > 0)."""
    method = PerformanceWeighting(["a", "b"], mode="inverse", gamma=2.0)
    method.after_evaluation(metrics(0.0, 1.0))
    fl = [-(0.9**2) * math.log(0.1), -(0.01**2) * math.log(0.99)]
    assert method.weights.tolist() == pytest.approx([f / sum(fl) for f in fl], rel=1e-5)


def test_performance_ema_and_named_metrics() -> None:
    """ema 0.5: the first evaluation sets the KPI, later ones move it halfway; metrics names b's metric."""
    method = PerformanceWeighting(["a", "b"], metrics={"b": "pixel_accuracy"}, ema=0.5)
    method.after_evaluation({"a": {"accuracy": 0.8}, "b": {"miou": 0.1, "pixel_accuracy": 0.6}})
    assert method.kpi.tolist() == pytest.approx([0.8, 0.6])
    method.after_evaluation({"a": {"accuracy": 0.4}, "b": {"miou": 0.1, "pixel_accuracy": 0.2}})
    assert method.kpi.tolist() == pytest.approx([0.6, 0.4])
    assert method.weights.tolist() == pytest.approx([0.6, 0.4], abs=1e-6)


def test_performance_state_dict_round_trip() -> None:
    method = PerformanceWeighting(["a", "b"], mode="inverse", ema=0.5)
    method.after_evaluation(metrics(0.8, 0.6))
    restored = PerformanceWeighting(["a", "b"], mode="inverse", ema=0.5)
    restored.load_state_dict(method.state_dict())
    assert set(method.state_dict()) == {"kpi", "num_evaluations", "weights"}
    assert restored.weights.tolist() == method.weights.tolist()
    assert restored.num_evaluations.item() == 1
    restored.after_evaluation(metrics(0.4, 0.2))  # smooths with the restored KPIs instead of restarting
    assert restored.kpi.tolist() == pytest.approx([0.6, 0.4])


def test_performance_rejects_a_task_without_a_unit_interval_metric() -> None:
    method = PerformanceWeighting(["a", "hr"])
    with pytest.raises(ConfigError, match=r"task 'hr' reports \['loss', 'mae', 'rmse'\].*weighting.metrics"):
        method.after_evaluation({"a": {"accuracy": 0.5}, "hr": {"mae": 3.0, "rmse": 4.0, "loss": 1.0}})
    assert method.num_evaluations.item() == 0


def test_performance_rejects_out_of_range_and_absent_named_metrics() -> None:
    method = PerformanceWeighting(["a", "rec"], metrics={"rec": "psnr"})
    with pytest.raises(ConfigError, match=r"in \[0, 1\].*task 'rec' has psnr = 25.0"):
        method.after_evaluation({"a": {"accuracy": 0.5}, "rec": {"mse": 0.01, "psnr": 25.0}})
    with pytest.raises(ConfigError, match="weighting.metrics names 'psnr' for task 'rec'"):
        method.after_evaluation({"a": {"accuracy": 0.5}, "rec": {"mse": 0.01}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mode": "softmax"}, "weighting.mode"), ({"ema": 0.0}, "weighting.ema"), ({"gamma": -1.0}, "weighting.gamma"),
     ({"metrics": {"c": "accuracy"}}, "unknown tasks"), ({"metrics": {"a": "mse"}}, "lower-is-better")],
)
def test_performance_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PerformanceWeighting(["a", "b"], **kwargs)
