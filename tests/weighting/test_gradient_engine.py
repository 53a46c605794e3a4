"""The gradient engine (mtl_train.weighting.gradients): the batched and the loop Jacobian give the naive engine's G, on
models with dropout and BatchNorm in train mode and with shared parameters some task does not reach; every
gradient method steps identically with either; rep and params coincide where they must; ``auto`` falls back."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from conftest import CONFIG_DIR, compose_config
from torch import nn

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.backbones.multi_lenet import multi_lenet
from mtl_train.backbones.soft import SoftSharingBackbone
from mtl_train.backbones.transformer import transformer_encoder
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting import gradients
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradient_based import GradientWeighting
from mtl_train.weighting.gradients import TrunkJacobian, representation_gradients, task_gradient_matrix

TASKS = ["a", "b", "c"]
WEIGHTINGS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml")
                    if "jacobian:" in p.read_text())  # the methods that take per-task gradients


class Unused(nn.Module):
    """A shared parameter no task reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def with_unused_parameter(tasks: list[str]) -> HardSharedBackbone:
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), Unused())]
    return HardSharedBackbone(blocks, tasks, split_depth=1, out_channels=6, spatial_dims=0)


SIGNAL = dict(in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
BACKBONES: dict[str, tuple[Callable[[list[str]], nn.Module], tuple[int, ...]]] = {
    "multi_lenet": (lambda tasks: multi_lenet(tasks, 1, (28, 28)), (1, 28, 28)),  # Dropout2d, train mode
    "cnn_batchnorm": (lambda tasks: hard_cnn(tasks, **SIGNAL), (1, 16)),  # BatchNorm, train mode
    "soft": (lambda tasks: SoftSharingBackbone(tasks, **SIGNAL), (1, 16)),  # task t reaches tower t only
    "unused": (with_unused_parameter, (1, 16)),
    "transformer": (lambda tasks: transformer_encoder(tasks, 1, (16,), d_model=8, num_layers=1, num_heads=2,
                                                      ffn_dim=16, patch_size=4), (1, 16)),
}


def build(backbone: str, tasks: list[str] = TASKS) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = BACKBONES[backbone][0](tasks)
    heads = {t: ClassificationHead(trunk.out_channels, trunk.spatial_dims, num_classes=3, hidden=8, dropout=0.5)
             for t in tasks}
    return MultiTaskModel(trunk, heads).train()


def step_inputs(model: MultiTaskModel, shape: tuple[int, ...], batch: int = 8) -> tuple[torch.Tensor, StepContext]:
    """The losses of one seeded batch (the same dropout masks on every call) and the step context."""
    torch.manual_seed(1)
    x, y = torch.randn(batch, *shape), torch.randint(0, 3, (batch,))
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([nn.functional.cross_entropy(outputs[t], y) for t in model.task_names])
    return losses, StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_batched_and_loop_jacobians_equal_the_naive_engine(backbone: str) -> None:
    model = build(backbone)
    losses, ctx = step_inputs(model, BACKBONES[backbone][1])
    z, shared = ctx.shared_representation, model.shared_parameters()
    naive = task_gradient_matrix(losses, shared)
    rows, _ = representation_gradients(losses, z, [[] for _ in TASKS])
    torch.testing.assert_close(rows.flatten(1), task_gradient_matrix(losses, [z]))  # rep mode's G
    batched = TrunkJacobian("batched")(z, shared, rows)
    loop = TrunkJacobian("loop")(z, shared, rows)
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loop, naive, rtol=1e-5, atol=1e-6)
    assert (naive.norm(dim=1) > 0).all()
    if backbone == "soft":  # row t is zero outside tower t
        assert torch.count_nonzero(batched[0] * batched[1]) == 0
    if backbone == "unused":
        assert (batched[:, -3:] == 0).all() and (loop[:, -3:] == 0).all()


def test_representation_gradients_give_each_task_its_own_parameter_gradients() -> None:
    model = build("cnn_batchnorm")
    losses, ctx = step_inputs(model, (1, 16))
    _, own = representation_gradients(losses, ctx.shared_representation,
                                       [model.task_parameters(t) for t in TASKS])
    for t, grads in zip(range(3), own):
        expected = torch.autograd.grad(losses[t], model.task_parameters(TASKS[t]), retain_graph=True)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e)


def weighting(name: str, *overrides: str) -> nn.Module:
    cfg = compose_config([f"weighting={name}", *overrides])
    return instantiate(cfg.weighting, "weighting", task_names=TASKS)


def step_gradients(method: nn.Module, backbone: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weights one ``method.backward`` returns and every parameter's gradient it leaves."""
    model = build(backbone)
    losses, ctx = step_inputs(model, BACKBONES[backbone][1])
    weights = method.backward(losses, ctx)
    return weights, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", WEIGHTINGS)
def test_every_method_steps_identically_with_the_batched_and_the_loop_jacobian(name: str) -> None:
    params_only = {"gradnorm": ["weighting.gradient_params=shared"], "db_mtl": [], "excess_mtl": [], "moco": []}
    params_mode = params_only.get(name, ["weighting.mode=params"])
    batched = step_gradients(weighting(name, "weighting.jacobian=batched", *params_mode), "multi_lenet")
    loop = step_gradients(weighting(name, "weighting.jacobian=loop", *params_mode), "multi_lenet")
    torch.testing.assert_close(batched[0], loop[0], rtol=1e-4, atol=1e-6)
    assert batched[1].keys() == loop[1].keys() and len(batched[1]) > 0
    for key, grad in batched[1].items():
        torch.testing.assert_close(grad, loop[1][key], rtol=1e-4, atol=1e-6)


class LinearTrunk(HardSharedBackbone):
    """z = W x, no bias: with one sample x of unit norm, the row of G for W is vec(g_z x^T), whose inner products are
    those of the g_z, so G G^T is the same in both modes."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__([nn.Linear(5, 6, bias=False)], tasks, split_depth=1, out_channels=6, spatial_dims=0)


# db_mtl, excess_mtl, gradnorm and moco have no rep mode; graddrop's rule acts on coordinates (with sign(z) in rep
# mode), not on G G^T
@pytest.mark.parametrize("name", [n for n in WEIGHTINGS
                                  if n not in ("db_mtl", "excess_mtl", "gradnorm", "graddrop", "moco")])
def test_rep_and_params_agree_where_the_gramians_coincide(name: str) -> None:
    """Every rule is a function of the Gramian whose direction is weights @ G; with equal Gramians the weights are
    equal, and rep mode's trunk backward of d_z gives W.grad = d_z x^T, the params direction."""
    results = []
    for mode in ("params", "rep"):
        torch.manual_seed(0)
        model = MultiTaskModel(LinearTrunk(TASKS), {t: ClassificationHead(6, 0, num_classes=3, hidden=4)
                                                    for t in TASKS})
        x = torch.nn.functional.normalize(torch.randn(1, 5), dim=1)
        z = model.encode(x)
        outputs = model.decode(z, x)
        losses = torch.stack([nn.functional.cross_entropy(outputs[t], torch.tensor([i]))
                              for i, t in enumerate(TASKS)])
        method = weighting(name, f"weighting.mode={mode}")
        weights = method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss,
                                                      shared_representation=z))
        results.append((weights, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
    for params_grad, rep_grad in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(params_grad, rep_grad, rtol=1e-4, atol=1e-6)


class Buffered(torch.autograd.Function):
    """Doubles its input; its backward writes into a fresh buffer in place, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return 2 * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        buffer = torch.zeros_like(x)
        buffer.copy_(grad)
        return 2 * buffer


def test_auto_falls_back_to_the_loop_once_and_remembers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gradients, "AUTO_BATCHED_DEVICES", ("cpu",))  # make `auto` try batching on this CPU
    linear = nn.Linear(4, 3)
    losses_of = [lambda z: z.pow(2).sum(), lambda z: z.sin().sum()]
    z = Buffered.apply(linear(torch.randn(5, 4)))
    losses = torch.stack([f(z) for f in losses_of])
    rows, _ = representation_gradients(losses, z, [[], []])
    params = list(linear.parameters())
    naive = task_gradient_matrix(losses, params)

    with pytest.raises(RuntimeError, match="vmap"):
        TrunkJacobian("batched")(z, params, rows)
    engine = TrunkJacobian("auto")
    assert engine.batches(z.device)
    with pytest.warns(RuntimeWarning, match="batched per-task backward failed"):
        torch.testing.assert_close(engine(z, params, rows), naive)
    assert engine.batching_failed and not engine.batches(z.device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(engine(z, params, rows), naive)  # the loop, without trying (and warning) again


def test_auto_batches_on_cuda_only_and_the_option_is_validated() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert TrunkJacobian("auto").batches(cuda) and not TrunkJacobian("auto").batches(cpu)
    assert TrunkJacobian("batched").batches(cpu) and not TrunkJacobian("loop").batches(cuda)
    with pytest.raises(ConfigError, match="weighting.jacobian"):
        TrunkJacobian("vmap")
    assert all(isinstance(weighting(name), GradientWeighting) or name == "gradnorm" for name in WEIGHTINGS)
    assert {"cagrad", "gradnorm", "mgda", "nash_mtl", "pcgrad", "upgrad", "fairgrad", "modo"} <= set(WEIGHTINGS)
