"""Every gradient method in configs/weighting/ (found by glob, so new methods are covered) runs on MTAN, CGC, PLE,
DSelect-k and LTB: in ``mode=params``, and in ``mode=rep`` where the backbone shares z and the method offers it;
every model parameter ends with a finite gradient and the weights are finite."""

from __future__ import annotations

import functools

import pytest
import torch
from backbone_checks import classifier, losses_and_z
from conftest import CONFIG_DIR, compose_config
from omegaconf import open_dict

from mtl_train.backbones.dselect_k import dselect_k_cnn
from mtl_train.backbones.ltb import LearningToBranch
from mtl_train.backbones.mtan import MTANBackbone
from mtl_train.backbones.ple import ple_cnn
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradient_based import GradientWeighting

TASKS = ["a", "b", "c"]
SIGNAL = dict(in_channels=2, input_size=(16,), spatial_dims=1, channels=(4, 6), kernel_size=3)
BACKBONES = {
    "mtan": lambda: MTANBackbone(TASKS, **SIGNAL),
    "cgc": lambda: ple_cnn(TASKS, num_levels=1, **SIGNAL),
    "ple": lambda: ple_cnn(TASKS, num_levels=2, **SIGNAL),
    "dselect_k": lambda: dselect_k_cnn(TASKS, num_experts=3, **SIGNAL),
    "ltb": lambda: LearningToBranch(TASKS, **SIGNAL),
}
SHARES_Z = {"mtan": False, "cgc": True, "ple": True, "dselect_k": True, "ltb": True}


@functools.cache
def weighting_node(name: str):
    return compose_config([f"weighting={name}"]).weighting


def build(name: str, **overrides):
    """The method of configs/weighting/<name>.yaml with ``overrides`` (keys its YAML may not list, e.g. DB-MTL's
    mode)."""
    node = weighting_node(name).copy()
    with open_dict(node):
        node.merge_with(overrides)
    return instantiate(node, "weighting", task_names=TASKS)


METHODS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml"))
GRADIENT_METHODS = [name for name in METHODS if isinstance(build(name), GradientWeighting)]
# rep mode for the methods whose YAML offers weighting.mode (DB-MTL, for one, is defined on parameters only)
CASES = [(backbone, method, mode) for backbone in BACKBONES for method in GRADIENT_METHODS
         for mode in (("params", "rep") if SHARES_Z[backbone] and "mode" in weighting_node(method) else ("params",))]


@pytest.mark.parametrize(("backbone", "method", "mode"), CASES)
def test_gradient_method_runs(backbone: str, method: str, mode: str) -> None:
    torch.manual_seed(0)
    model = classifier(BACKBONES[backbone](), TASKS)
    x = torch.randn(6, 2, 16)
    losses, z = losses_and_z(model, x)
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, inputs=x, shared_representation=z,
                      class_logits={t: True for t in TASKS})
    weights = build(method, mode=mode).backward(losses, ctx)
    assert weights.shape == (3,) and torch.isfinite(weights).all()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
