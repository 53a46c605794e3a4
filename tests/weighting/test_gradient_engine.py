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


def record_batched_backwards(monkeypatch: pytest.MonkeyPatch, most: int | None = None) -> list[int]:
    """Make every batched backward append its number of cotangents to the returned list; with ``most``, those of more
    cotangents raise ``torch.OutOfMemoryError`` instead of running."""
    sizes: list[int] = []
    real = gradients.batched_backward

    def recorded(z: torch.Tensor, params: list[torch.Tensor], cotangents: torch.Tensor) -> tuple:
        sizes.append(cotangents.shape[0])
        if most is not None and cotangents.shape[0] > most:
            raise torch.OutOfMemoryError(f"{cotangents.shape[0]} cotangents do not fit")
        return real(z, params, cotangents)

    monkeypatch.setattr(gradients, "batched_backward", recorded)
    return sizes


def five_cotangents() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """z of the conv trunk with batch norm, its shared parameters, and 5 random cotangents of z."""
    model = build("cnn_batchnorm")
    _, ctx = step_inputs(model, (1, 16))
    z = ctx.shared_representation
    return z, model.shared_parameters(), torch.randn(5, *z.shape, generator=torch.Generator().manual_seed(2))


def test_chunked_batched_backwards_give_the_rows_of_one_batched_backward_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    z, shared, cotangents = five_cotangents()
    whole = TrunkJacobian("batched")(z, shared, cotangents)
    loop = TrunkJacobian("loop")(z, shared, cotangents)
    torch.testing.assert_close(whole, loop, rtol=1e-5, atol=1e-6)
    sizes = record_batched_backwards(monkeypatch)
    for chunk, expected_sizes in ((1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (3, [3, 2]), (8, [5])):
        sizes.clear()
        chunked = TrunkJacobian("batched", chunk)(z, shared, cotangents)
        assert sizes == expected_sizes
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked, loop, rtol=1e-5, atol=1e-6)


def test_a_batched_backward_out_of_memory_is_retried_with_half_the_cotangents_and_the_size_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    z, shared, cotangents = five_cotangents()
    in_pairs = TrunkJacobian("batched", 2)(z, shared, cotangents)
    sizes = record_batched_backwards(monkeypatch, most=2)
    engine = TrunkJacobian("batched")  # chunk picked: all 5 rows off CUDA
    with pytest.warns(RuntimeWarning, match="5 cotangents ran out of GPU memory; retrying with 2 per") as caught:
        rows = engine(z, shared, cotangents)
    assert len(caught) == 1 and "weighting.jacobian_chunk" in str(caught[0].message)
    assert sizes == [5, 2, 2, 1] and engine.chunk_limit == 2
    assert torch.equal(rows, in_pairs)  # the same backwards as chunks of 2 from the start
    sizes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(engine(z, shared, cotangents), in_pairs)
    assert sizes == [2, 2, 1]  # starts at the size that worked, without warning again


def test_out_of_memory_with_one_cotangent_raises_or_falls_back_to_the_loop_under_auto(
        monkeypatch: pytest.MonkeyPatch) -> None:
    z, shared, cotangents = five_cotangents()
    loop = TrunkJacobian("loop")(z, shared, cotangents)
    sizes = record_batched_backwards(monkeypatch, most=0)
    with pytest.warns(RuntimeWarning, match="ran out of GPU memory"), pytest.raises(torch.OutOfMemoryError):
        TrunkJacobian("batched", 4)(z, shared, cotangents)
    assert sizes == [4, 2, 1]
    monkeypatch.setattr(gradients, "AUTO_BATCHED_DEVICES", ("cpu",))
    engine = TrunkJacobian("auto")
    with pytest.warns(RuntimeWarning) as caught:
        torch.testing.assert_close(engine(z, shared, cotangents), loop)
    assert [str(w.message).split(";")[0] for w in caught] == [
        "a batched per-task backward of 5 cotangents ran out of GPU memory",
        "the batched per-task backward failed (OutOfMemoryError: 1 cotangents do not fit)"]
    assert engine.batching_failed


def test_a_null_chunk_is_sized_from_one_measured_backward_and_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 0 alone takes 100 bytes and 450 are free: half of them hold 2 rows per batched backward."""
    z, shared, cotangents = five_cotangents()
    whole = TrunkJacobian("batched")(z, shared, cotangents)
    monkeypatch.setattr(gradients, "MEMORY_BOUNDED_DEVICES", ("cpu",))
    measured: list[int] = []

    def measured_backward(z: torch.Tensor, params: list[torch.Tensor], cotangent: torch.Tensor
                          ) -> tuple[torch.Tensor, int]:
        measured.append(cotangent.shape[0])
        return gradients.flat_rows(gradients.batched_backward(z, params, cotangent), params, 1), 100

    monkeypatch.setattr(gradients, "measured_backward", measured_backward)
    monkeypatch.setattr(gradients, "free_memory", lambda device: 450)
    sizes = record_batched_backwards(monkeypatch)
    engine = TrunkJacobian("batched")
    torch.testing.assert_close(engine(z, shared, cotangents), whole, rtol=1e-5, atol=1e-6)
    assert measured == [1] and sizes == [1, 2, 2] and engine.planned == {(5, *z.shape): 2}
    sizes.clear()
    torch.testing.assert_close(engine(z, shared, cotangents), whole, rtol=1e-5, atol=1e-6)
    assert measured == [1] and sizes == [2, 2, 1]  # measured once per (m, z shape)
    sizes.clear()
    TrunkJacobian("batched", 4)(z, shared, cotangents)
    assert measured == [1] and sizes == [4, 1]  # a set chunk is not measured


def test_the_memory_bounded_chunk_fills_the_free_share_with_whole_rows() -> None:
    mib = 2 ** 20
    assert gradients.FREE_FRACTION == 0.5
    assert gradients.memory_bounded_chunk(32, 3 * mib, 100 * mib) == 16  # 50 MiB / 3 MiB = 16.7
    assert gradients.memory_bounded_chunk(8, 3 * mib, 100 * mib) == 8  # never more than the rows
    assert gradients.memory_bounded_chunk(8, 100, 1000, free_fraction=0.9) == 8  # 900 / 100 = 9 fit, 8 asked
    assert gradients.memory_bounded_chunk(20, 100, 1000, free_fraction=0.9) == 9
    assert gradients.memory_bounded_chunk(8, 300, 500) == 1  # not even one row fits: one at a time
    assert gradients.memory_bounded_chunk(8, 0, 500) == 8  # a row that takes nothing


@pytest.mark.parametrize("chunk", [0, -2, True, 2.5, "4"])
def test_a_bad_jacobian_chunk_is_one_config_error_naming_the_key(chunk: object) -> None:
    with pytest.raises(ConfigError, match=r"weighting.jacobian_chunk must be null \(as many cotangents per batched "
                                          r"trunk backward as fit in GPU memory\) or an integer >= 1"):
        TrunkJacobian("batched", chunk)


def test_every_gradient_method_takes_jacobian_chunk_from_its_config() -> None:
    for name in WEIGHTINGS:
        assert "\njacobian_chunk: null " in (CONFIG_DIR / "weighting" / f"{name}.yaml").read_text()
        assert weighting(name, "weighting.jacobian_chunk=3").trunk_jacobian.chunk == 3
    with pytest.raises(ConfigError, match="weighting.jacobian_chunk must be null"):
        weighting("mgda", "weighting.jacobian_chunk=0")
    with pytest.raises(ConfigError, match="weighting.jacobian_chunk=True must be an integer or null"):
        weighting("sdmgrad", "weighting.jacobian_chunk=true")
