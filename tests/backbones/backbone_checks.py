"""Checks shared by the tests of MTAN, CGC / PLE, DSelect-k and LTB: the gradient methods on a backbone (PCGrad and
MGDA in ``mode=params``, and in ``mode=rep`` where z is shared, GradNorm on the last shared layer), and 2-step
trainer runs with PCGrad, MGDA and GradNorm."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_train import read_csv_rows, smoke_config

from mtl_train.backbones.base import Backbone
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.train import train
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.gradnorm import GradNorm
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.pcgrad import PCGrad


def classifier(backbone: Backbone, tasks: list[str]) -> MultiTaskModel:
    """``backbone`` with a 3-class classification head per task."""
    heads = {t: ClassificationHead(backbone.out_channels, backbone.spatial_dims, num_classes=3, hidden=8)
             for t in tasks}
    return MultiTaskModel(backbone, heads)


def losses_and_z(model: MultiTaskModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tasks' cross-entropy losses on fixed labels, and z (in the graph)."""
    y = torch.arange(x.shape[0]) % 3
    z = model.encode(x)
    outputs = model.decode(z, x)
    return torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in model.task_names]), z


def context(model: MultiTaskModel, z: torch.Tensor) -> StepContext:
    return StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)


def check_gradient_methods(make_model, x: torch.Tensor) -> None:
    """PCGrad and MGDA in params mode give the shared parameters the direction their aggregation of the per-task
    gradient matrix gives; rep mode runs where z is shared and is refused elsewhere; GradNorm's W gets every task's
    gradient. Every parameter ends with a finite gradient."""
    for method in (PCGrad, MGDA):
        model = make_model()
        losses, z = losses_and_z(model, x)
        grads = task_gradient_matrix(losses, model.shared_parameters())
        assert (grads.norm(dim=1) > 0).all()
        expected = method(model.task_names, mode="params").aggregate(grads, losses.detach())
        weights = method(model.task_names, mode="params").backward(losses, context(model, z))
        assert torch.allclose(weights, expected.weights, atol=1e-5)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        flat = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
        assert torch.allclose(flat, expected.direction, atol=1e-5)

    model = make_model()
    losses, z = losses_and_z(model, x)
    if model.backbone.shares_representation:
        PCGrad(model.task_names, mode="rep").backward(losses, context(model, z))
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    else:
        with pytest.raises(ConfigError, match="weighting.mode=params"):
            PCGrad(model.task_names, mode="rep").backward(losses, context(model, z))

    model = make_model()
    losses, z = losses_and_z(model, x)
    layer = list(model.last_shared_layer().parameters())
    assert (task_gradient_matrix(losses, layer).norm(dim=1) > 0).all()
    method = GradNorm(model.task_names)
    assert method.backward(losses, context(model, z)).tolist() == [1.0] * len(model.task_names)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


SMOKE_WEIGHTINGS = ["pcgrad", "mgda", "gradnorm"]


def train_two_steps(backbone: str, weighting: str, overrides: list[str], shares_z: bool, tmp_path: Path,
                    data_root: Path) -> None:
    """A 2-step ECG run (rhythm + denoise) of ``backbone`` with ``weighting``: finite losses and weights. MGDA runs on
    z (its default, MGDA-UB) where the backbone shares one (``shares_z``), else on the shared parameters."""
    mode = ["weighting.mode=params"] if weighting == "mgda" and not shares_z else []
    cfg = smoke_config("ecg_cls_rec", weighting, tmp_path, data_root,
                       [f"backbone={backbone}", *overrides, *mode, "trainer.plots=false"])
    cfg.dataset.num_val = 16
    summary = train(cfg)
    assert summary["steps"] == 2
    for name in ("losses.csv", "weights.csv"):
        rows = read_csv_rows(tmp_path / name)
        assert len(rows) == 3 and all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:]), name
